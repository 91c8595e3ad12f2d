# Block-level emulation of attention_flash.cu's loop logic (tile bounds, document skipping, warp
# skips, mask shortcuts, online softmax guards, dk/dv work items), against a direct reference.
import math, random, sys
random.seed(1)
INF = float('inf')
LOG2E, LN2 = 1.4426950408889634, 0.6931471805599453
CH = 64

def chunks_of(doc, l):
    n = (l + CH - 1) // CH
    return [(min(doc[c*CH:min(c*CH+CH, l)]), max(doc[c*CH:min(c*CH+CH, l)])) for c in range(n)]
def doc_range(ch, t0, count, l):
    c0, c1 = t0 // CH, (min(t0 + count, l) - 1) // CH
    return (min(ch[c][0] for c in range(c0, c1+1)), max(ch[c][1] for c in range(c0, c1+1)))
disjoint = lambda a, b: a[1] < b[0] or b[1] < a[0]
one_doc = lambda a, b: a[0] == a[1] and b[0] == b[1] and a[0] == b[0]
dot = lambda x, y: sum(a*b for a, b in zip(x, y))

def run(l, h, hk, dh, doc, scale):
    group = h // hk
    q = [[[random.gauss(0,1) for _ in range(dh)] for _ in range(h)] for _ in range(l)]
    k = [[[random.gauss(0,1) for _ in range(dh)] for _ in range(hk)] for _ in range(l)]
    v = [[[random.gauss(0,1) for _ in range(dh)] for _ in range(hk)] for _ in range(l)]
    do = [[[random.gauss(0,1) for _ in range(dh)] for _ in range(h)] for _ in range(l)]
    vis = lambda i, j: j <= i and (doc is None or doc[i] == doc[j])
    # reference
    ref_out = [[None]*h for _ in range(l)]; ref_lse = [[None]*l for _ in range(h)]
    ref_dq = [[[0.0]*dh for _ in range(h)] for _ in range(l)]
    ref_dk = [[[0.0]*dh for _ in range(hk)] for _ in range(l)]; ref_dv = [[[0.0]*dh for _ in range(hk)] for _ in range(l)]
    for hh in range(h):
        g = hh // group
        for i in range(l):
            js = [j for j in range(l) if vis(i, j)]
            sc = {j: scale * dot(q[i][hh], k[j][g]) for j in js}
            mx = max(sc.values()); lse = mx + math.log(sum(math.exp(x - mx) for x in sc.values()))
            ref_lse[hh][i] = lse
            P = {j: math.exp(sc[j] - lse) for j in js}
            ref_out[i][hh] = [sum(P[j] * v[j][g][e] for j in js) for e in range(dh)]
            delta = dot(do[i][hh], ref_out[i][hh])
            for j in js:
                dp = dot(do[i][hh], v[j][g]); ds = P[j] * (dp - delta)
                for e in range(dh):
                    ref_dq[i][hh][e] += scale * ds * k[j][g][e]
                    ref_dk[j][g][e] += scale * ds * q[i][hh][e]
                    ref_dv[j][g][e] += P[j] * do[i][hh][e]
    ch = chunks_of(doc, l) if doc else None
    docs = doc is not None
    rowdoc = lambda i: doc[i] if docs and i < l else 0
    kv = lambda arr, j, g: arr[j][g] if j < l else [0.0]*dh
    qq = lambda arr, i, hh: arr[i][hh] if i < l else [0.0]*dh
    sl2 = scale * LOG2E
    visited = 0
    # ---- forward (blocks of 128 queries, key tiles of 64) ----
    out = [[None]*h for _ in range(l)]; lse_out = [[None]*l for _ in range(h)]
    BM, BN = 128, 64
    nqb = (l + BM - 1) // BM
    for hh in range(h):
        g = hh // group
        for bx in range(nqb):
            q0 = (nqb - 1 - bx) * BM
            n_kt = (min(q0 + BM, l) + BN - 1) // BN
            qr = doc_range(ch, q0, BM, l) if docs else (0, 0)
            def next_tile(t):
                while docs and t < n_kt and disjoint(qr, doc_range(ch, t*BN, BN, l)): t += 1
                return t
            tiles = []; t = next_tile(0)
            while t < n_kt: tiles.append(t); t = next_tile(t + 1)
            for w in range(8):
                qw = q0 + 16*w
                rows = list(range(qw, qw + 16))
                m = {i: -INF for i in rows}; sm = {i: 0.0 for i in rows}; o = {i: [0.0]*dh for i in rows}
                for t in tiles:
                    j0 = t * BN
                    if not (qw < l and j0 <= qw + 15): continue
                    visited += 1
                    mixed = docs and not one_doc(qr, doc_range(ch, j0, BN, l))
                    for i in rows:
                        s = [dot(qq(q, i, hh), kv(k, j, g)) * sl2 for j in range(j0, j0 + BN)]
                        if j0 + BN - 1 > qw or mixed:
                            for jj in range(BN):
                                j = j0 + jj
                                kd = doc[j] if docs and j < l else 0
                                if not (j <= i and (not docs or kd == rowdoc(i))): s[jj] = -INF
                        mx = max(s); new = max(m[i], mx); ref = 0.0 if new == -INF else new
                        corr = 2 ** (m[i] - ref) if m[i] != -INF else 0.0
                        m[i] = new; sm[i] *= corr; o[i] = [x * corr for x in o[i]]
                        p = [2 ** (x - ref) if x != -INF else 0.0 for x in s]
                        sm[i] += sum(p)
                        for jj in range(BN):
                            vv = kv(v, j0 + jj, g)
                            for e in range(dh): o[i][e] += p[jj] * vv[e]
                for i in rows:
                    if i < l:
                        inv = 1 / sm[i] if sm[i] > 0 else 0.0
                        out[i][hh] = [x * inv for x in o[i]]
                        lse_out[hh][i] = (m[i] + math.log2(sm[i])) * LN2 if sm[i] > 0 else -INF
    err_o = max(abs(out[i][hh][e] - ref_out[i][hh][e]) for i in range(l) for hh in range(h) for e in range(dh))
    err_l = max(abs(lse_out[hh][i] - ref_lse[hh][i]) for i in range(l) for hh in range(h))
    delta = [[dot(do[i][hh], out[i][hh]) for i in range(l)] for hh in range(h)]
    # ---- dq (blocks of 128 queries, key tiles of 64) ----
    dq = [[None]*h for _ in range(l)]
    for hh in range(h):
        g = hh // group
        for bx in range(nqb):
            q0 = (nqb - 1 - bx) * BM
            n_kt = (min(q0 + BM, l) + BN - 1) // BN
            qr = doc_range(ch, q0, BM, l) if docs else (0, 0)
            def next_tile(t):
                while docs and t < n_kt and disjoint(qr, doc_range(ch, t*BN, BN, l)): t += 1
                return t
            tiles = []; t = next_tile(0)
            while t < n_kt: tiles.append(t); t = next_tile(t + 1)
            for w in range(8):
                qw = q0 + 16*w
                acc = {i: [0.0]*dh for i in range(qw, qw + 16)}
                for t in tiles:
                    j0 = t * BN
                    if not (qw < l and j0 <= qw + 15): continue
                    mixed = docs and not one_doc(qr, doc_range(ch, j0, BN, l))
                    masked = j0 + BN - 1 > qw or qw + 15 >= l or mixed
                    for i in acc:
                        l2 = lse_out[hh][i] * LOG2E if i < l else 0.0
                        dl = delta[hh][i] if i < l else 0.0
                        for jj in range(BN):
                            j = j0 + jj
                            kd = doc[j] if docs and j < l else 0
                            seen = (not masked) or (i < l and j <= i and (not docs or kd == rowdoc(i)))
                            s = dot(qq(q, i, hh), kv(k, j, g)); dp = dot(qq(do, i, hh), kv(v, j, g))
                            pr = 2 ** (s * sl2 - l2) if seen else 0.0
                            ds = pr * (dp - dl)
                            kk_ = kv(k, j, g)
                            for e in range(dh): acc[i][e] += ds * kk_[e]
                for i in acc:
                    if i < l: dq[i][hh] = [x * scale for x in acc[i]]
    err_dq = max(abs(dq[i][hh][e] - ref_dq[i][hh][e]) for i in range(l) for hh in range(h) for e in range(dh))
    # ---- dk/dv (blocks of 128 keys, query tiles of 64) ----
    KBN, KBM = 128, 64
    dk = [[None]*hk for _ in range(l)]; dv = [[None]*hk for _ in range(l)]
    for g in range(hk):
        for bx in range((l + KBN - 1) // KBN):
            k0 = bx * KBN
            kr = doc_range(ch, k0, KBN, l) if docs else (0, 0)
            qt_first = k0 // KBM; n_qt = (l + KBM - 1) // KBM; per_head = n_qt - qt_first
            n_items = group * per_head
            def next_item(it):
                while docs and it < n_items and disjoint(kr, doc_range(ch, (qt_first + it % per_head) * KBM, KBM, l)): it += 1
                return it
            items = []; it = next_item(0)
            while it < n_items: items.append(it); it = next_item(it + 1)
            for w in range(8):
                jw = k0 + 16*w
                adk = {j: [0.0]*dh for j in range(jw, jw + 16)}; adv = {j: [0.0]*dh for j in range(jw, jw + 16)}
                for it in items:
                    hh = g * group + it // per_head; i0 = (qt_first + it % per_head) * KBM
                    if not (jw < l and jw <= i0 + KBM - 1): continue
                    mixed = docs and not one_doc(kr, doc_range(ch, i0, KBM, l))
                    masked = jw + 15 > i0 or i0 + KBM > l or mixed
                    for j in adk:
                        kd = doc[j] if docs and j < l else 0
                        for ii in range(KBM):
                            i = i0 + ii
                            qd = doc[i] if docs and i < l else 0
                            lse_i = lse_out[hh][i] if i < l else 0.0; dl = delta[hh][i] if i < l else 0.0
                            seen = (not masked) or (i < l and j <= i and (not docs or qd == kd))
                            s = dot(kv(k, j, g), qq(q, i, hh)); dp = dot(kv(v, j, g), qq(do, i, hh))
                            pr = 2 ** (s * sl2 - lse_i * LOG2E) if seen else 0.0
                            ds = pr * (dp - dl)
                            qi, di = qq(q, i, hh), qq(do, i, hh)
                            for e in range(dh):
                                adv[j][e] += pr * di[e]; adk[j][e] += ds * qi[e]
                for j in adk:
                    if j < l: dk[j][g] = [x * scale for x in adk[j]]; dv[j][g] = adv[j]
    err_dk = max(abs(dk[j][g][e] - ref_dk[j][g][e]) for j in range(l) for g in range(hk) for e in range(dh))
    err_dv = max(abs(dv[j][g][e] - ref_dv[j][g][e]) for j in range(l) for g in range(hk) for e in range(dh))
    return err_o, err_l, err_dq, err_dk, err_dv

def short_docs(l):
    d, idn, left = [], 0, 1
    for t in range(l):
        if left == 0: idn += 1; left = idn % 7 + 1
        d.append(idn); left -= 1
    return d
cases = [
    (1, 2, 1, 3, None, 0.5), (77, 2, 1, 3, None, 0.5), (200, 4, 2, 2, None, -0.3),
    (130, 2, 2, 2, [t // 23 for t in range(130)], 0.5), (333, 4, 1, 2, short_docs(333), 0.5),
    (300, 4, 2, 2, [t // 150 for t in range(300)], 0.7), (260, 2, 2, 2, [(t // 5) % 3 for t in range(260)], 0.5),
    (200, 2, 1, 2, [7] * 200, 0.5), (1, 2, 2, 2, [3], 0.5), (129, 2, 1, 2, [(t >= 3) + (t >= 40) for t in range(129)], 0.5),
]
worst = 0
for c in cases:
    errs = run(*c[:4], c[4], c[5])
    worst = max(worst, max(errs))
    print(c[0], c[1], c[2], c[3], 'docs' if c[4] else 'nodocs', c[5], ' '.join('%.1e' % e for e in errs))
print('worst', worst)
