#!/usr/bin/env python3
"""Whether a refactor changed any kernel's machine code: compares the sm_* cubins embedded in two
sets of CUDA object files (e.g. build-before/.../ssd.cu.o against the split build-after/.../ssd*.cu.o),
kernel by kernel, by the bytes of each kernel's .text section. Names are demangled and stripped of
anonymous and detail namespaces, so a kernel that moved between files or namespaces still pairs up.
With --ptxas, also compares the 'Used N registers' lines of two nvcc -Xptxas=-v logs.
usage: compare.py --before A.o [B.o ...] --after C.o [D.o ...] [--ptxas-before LOG --ptxas-after LOG]"""
import argparse, hashlib, re, struct, subprocess

STRIP = ('(anonymous namespace)::', 'ssmtrain::kernels::', 'cuda_detail::', 'ssd_detail::')

def demangle(names):
    out = subprocess.run(['c++filt'], input='\n'.join(names), capture_output=True, text=True).stdout.split('\n')
    res = []
    for d in out[:len(names)]:
        for ns in STRIP:
            d = d.replace(ns, '')
        res.append(d)
    return res

def kernels(paths):  # normalised name -> (text bytes, sha256 prefix)
    raw = {}
    for path in paths:
        data = open(path, 'rb').read()
        for m in re.finditer(b'\x7fELF\x02\x01', data):
            off = m.start()
            if struct.unpack_from('<H', data, off + 18)[0] != 190:  # EM_CUDA
                continue
            shoff = struct.unpack_from('<Q', data, off + 0x28)[0]
            shentsize, shnum, shstrndx = struct.unpack_from('<HHH', data, off + 0x3A)
            hdrs = [struct.unpack_from('<IIQQQQ', data, off + shoff + i * shentsize) for i in range(shnum)]
            strtab = data[off + hdrs[shstrndx][4]: off + hdrs[shstrndx][4] + hdrs[shstrndx][5]]
            for name, typ, _, _, soff, size in hdrs:
                nm = strtab[name:strtab.index(b'\0', name)].decode()
                if nm.startswith('.text.'):
                    raw[nm[6:]] = (size, hashlib.sha256(data[off + soff: off + soff + size]).hexdigest()[:16])
    return dict(zip(demangle(list(raw)), raw.values()))

def resources(path):  # normalised name -> 'regs / spill stores / spill loads / smem'
    rows, cur = {}, None
    for line in open(path):
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            cur = m.group(1)
            continue
        m = re.search(r'(\d+) bytes spill stores, (\d+) bytes spill loads', line)
        if m and cur:
            rows.setdefault(cur, {})['spill'] = f'{m.group(1)}/{m.group(2)}'
        m = re.search(r'Used (\d+) registers', line)
        if m and cur:
            sm = re.search(r'(\d+) bytes smem', line)
            rows.setdefault(cur, {}).update(regs=m.group(1), smem=sm.group(1) if sm else '0')
    names = list(rows)
    return {d: f"{rows[n].get('regs')} regs, spills {rows[n].get('spill')}, smem {rows[n].get('smem')}"
            for n, d in zip(names, demangle(names))}

def report(title, before, after):
    same = [k for k in after if before.get(k) == after[k]]
    print(f'{title}: {len(after)} kernels after, {len(same)} identical to before')
    for k in sorted(after):
        if k in before and before[k] != after[k]:
            print(f'  changed: {k}\n    {before[k]} -> {after[k]}')
    for k in sorted(set(after) - set(before)):
        print(f'  new: {k}  {after[k]}')
    for k in sorted(set(before) - set(after)):
        print(f'  gone: {k}  {before[k]}')

ap = argparse.ArgumentParser()
ap.add_argument('--before', nargs='+', required=True)
ap.add_argument('--after', nargs='+', required=True)
ap.add_argument('--ptxas-before')
ap.add_argument('--ptxas-after')
args = ap.parse_args()
report('SASS', kernels(args.before), kernels(args.after))
if args.ptxas_before and args.ptxas_after:
    report('ptxas resources', resources(args.ptxas_before), resources(args.ptxas_after))
