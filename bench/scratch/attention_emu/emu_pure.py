# Emulates the warp-level fragment code of attention_flash.cu (ldmatrix / mma.sync per the PTX ISA
# tables) for one warp, to check lane addressing, .trans use and accumulator->A packing.

import random
random.seed(0)
class M:
    def __init__(self, r, c, fill=None):
        self.r, self.c = r, c
        self.v = [[(random.gauss(0,1) if fill is None else fill) for _ in range(c)] for _ in range(r)]
    def __getitem__(self, ij):
        i, j = ij
        if isinstance(i, slice):
            out = M(len(range(*i.indices(self.r))), self.c, 0.0)
            out.v = [list(row) for row in self.v[i]]
            return out
        return self.v[i][j]
    def __setitem__(self, ij, x):
        self.v[ij[0]][ij[1]] = x
    @property
    def T(self):
        out = M(self.c, self.r, 0.0)
        out.v = [[self.v[i][j] for i in range(self.r)] for j in range(self.c)]
        return out
    def __matmul__(self, o):
        out = M(self.r, o.c, 0.0)
        for i in range(self.r):
            for j in range(o.c):
                out.v[i][j] = sum(self.v[i][k] * o.v[k][j] for k in range(self.c))
        return out
    def __add__(self, o):
        out = M(self.r, self.c, 0.0)
        out.v = [[a + b for a, b in zip(x, y)] for x, y in zip(self.v, o.v)]
        return out
    def maxdiff(self, o):
        return max(abs(a - b) for x, y in zip(self.v, o.v) for a, b in zip(x, y))
class np:
    @staticmethod
    def zeros(shape): return M(shape[0], shape[1], 0.0)
class Rng:
    def standard_normal(self, shape): return M(shape[0], shape[1])
rng = Rng()

def lane_offsets(lane):
    return dict(a_row=lane % 16, a_col=(lane // 16) * 8, b_row=lane % 8 + (lane // 16) * 8, b_col=((lane // 8) % 2) * 8)

def ldmatrix_x4(tile, addr, trans=False):
    # addr[lane] = (row, col) in tile; returns regs[lane][4] = pair of values
    regs = [[None]*4 for _ in range(32)]
    for i in range(4):
        for l in range(32):
            if not trans:
                r, c = addr[8*i + l // 4]
                regs[l][i] = (tile[r, c + 2*(l % 4)], tile[r, c + 2*(l % 4) + 1])
            else:
                vals = []
                for e in range(2):
                    r, c = addr[8*i + 2*(l % 4) + e]
                    vals.append(tile[r, c + l // 4])
                regs[l][i] = tuple(vals)
    return regs

def mma(d, a, b0, b1):
    # d[lane][4] floats; a[lane][4] pairs; b0[lane], b1[lane] pairs
    A = np.zeros((16, 16)); B = np.zeros((16, 8)); C = np.zeros((16, 8))
    for l in range(32):
        gr, tq = l // 4, l % 4
        for e in range(2):
            A[gr, 2*tq+e] = a[l][0][e]; A[gr+8, 2*tq+e] = a[l][1][e]
            A[gr, 2*tq+8+e] = a[l][2][e]; A[gr+8, 2*tq+8+e] = a[l][3][e]
            B[2*tq+e, gr] = b0[l][e]; B[2*tq+8+e, gr] = b1[l][e]
            C[gr, 2*tq+e] = d[l][e]; C[gr+8, 2*tq+e] = d[l][2+e]
    D = A @ B + C
    for l in range(32):
        gr, tq = l // 4, l % 4
        for e in range(2):
            d[l][e] = D[gr, 2*tq+e]; d[l][2+e] = D[gr+8, 2*tq+e]

def acc_to_a(c0, c1):
    # per lane: pack (c0[0],c0[1]), (c0[2],c0[3]), (c1[0],c1[1]), (c1[2],c1[3])
    return [[(c0[l][0], c0[l][1]), (c0[l][2], c0[l][3]), (c1[l][0], c1[l][1]), (c1[l][2], c1[l][3])] for l in range(32)]

def gather(acc_blocks, rows=16):
    # acc_blocks[nb][lane][4] -> matrix (16, 8 * nblocks)
    nb_count = len(acc_blocks)
    M = np.zeros((rows, 8 * nb_count))
    for nb in range(nb_count):
        for l in range(32):
            gr, tq = l // 4, l % 4
            for c in range(4):
                M[gr + (8 if c >= 2 else 0), 8*nb + 2*tq + (c & 1)] = acc_blocks[nb][l][c]
    return M

def zeros(n): return [[[0.0]*4 for _ in range(32)] for _ in range(n)]

def addr_a(row0, col0):   # A pattern (also .trans B) at block (row0, col0)
    return [(row0 + lane_offsets(l)['a_row'], col0 + lane_offsets(l)['a_col']) for l in range(32)]
def addr_b(row0, col0):   # non-trans B pattern
    return [(row0 + lane_offsets(l)['b_row'], col0 + lane_offsets(l)['b_col']) for l in range(32)]

DH, BN, BM = 64, 64, 64
warp = 3
# ---------- forward: S = Q K^T, O += P V ----------
Qt = rng.standard_normal((8*16, DH)); Kt = rng.standard_normal((BN, DH)); Vt = rng.standard_normal((BN, DH))
qf = [ldmatrix_x4(Qt, addr_a(16*warp, 16*kk)) for kk in range(DH//16)]
s = zeros(BN//8)
for kk in range(DH//16):
    for nn in range(BN//16):
        b = ldmatrix_x4(Kt, addr_b(16*nn, 16*kk))
        mma(s[2*nn], qf[kk], [x[0] for x in b], [x[1] for x in b])
        mma(s[2*nn+1], qf[kk], [x[2] for x in b], [x[3] for x in b])
S = gather(s); Sref = Qt[16*warp:16*warp+16, 0] @ Kt.T
print("fwd S err", (S).maxdiff(Sref))
P = rng.standard_normal((16, BN))
pblocks = zeros(BN//8)
for nb in range(BN//8):
    for l in range(32):
        gr, tq = l//4, l%4
        for c in range(4):
            pblocks[nb][l][c] = P[gr + (8 if c>=2 else 0), 8*nb + 2*tq + (c&1)]
assert gather(pblocks).maxdiff(P) < 1e-12
o = zeros(DH//8)
for kk in range(BN//16):
    pa = acc_to_a(pblocks[2*kk], pblocks[2*kk+1])
    for nd in range(DH//16):
        b = ldmatrix_x4(Vt, addr_a(16*kk, 16*nd), trans=True)
        mma(o[2*nd], pa, [x[0] for x in b], [x[1] for x in b])
        mma(o[2*nd+1], pa, [x[2] for x in b], [x[3] for x in b])
print("fwd O err", (gather(o)).maxdiff(P @ Vt))

# ---------- dq: dP = dO V^T (non-trans V), dQ += dS K (trans K) ----------
dOt = rng.standard_normal((8*16, DH))
dp = zeros(BN//8)
for kk in range(DH//16):
    da = ldmatrix_x4(dOt, addr_a(16*warp, 16*kk))
    for nn in range(BN//16):
        b = ldmatrix_x4(Vt, addr_b(16*nn, 16*kk))
        mma(dp[2*nn], da, [x[0] for x in b], [x[1] for x in b])
        mma(dp[2*nn+1], da, [x[2] for x in b], [x[3] for x in b])
print("dq dP err", (gather(dp)).maxdiff(dOt[16*warp:16*warp+16, 0] @ Vt.T))
dq = zeros(DH//8)
for kk in range(BN//16):
    a = acc_to_a(pblocks[2*kk], pblocks[2*kk+1])
    for nd in range(DH//16):
        b = ldmatrix_x4(Kt, addr_a(16*kk, 16*nd), trans=True)
        mma(dq[2*nd], a, [x[0] for x in b], [x[1] for x in b])
        mma(dq[2*nd+1], a, [x[2] for x in b], [x[3] for x in b])
print("dq dQ err", (gather(dq)).maxdiff(P @ Kt))

# ---------- dk/dv: S^T = K Q^T (A = K rows of warp, B = Q non-trans), dV += P^T dO (trans dO) ----------
Kb = rng.standard_normal((8*16, DH)); Qm = rng.standard_normal((BM, DH)); dOm = rng.standard_normal((BM, DH))
st = zeros(BM//8)
for kk in range(DH//16):
    ka = ldmatrix_x4(Kb, addr_a(16*warp, 16*kk))
    for nn in range(BM//16):
        b = ldmatrix_x4(Qm, addr_b(16*nn, 16*kk))
        mma(st[2*nn], ka, [x[0] for x in b], [x[1] for x in b])
        mma(st[2*nn+1], ka, [x[2] for x in b], [x[3] for x in b])
ST = gather(st)
print("dkdv S^T err", (ST).maxdiff(Kb[16*warp:16*warp+16, 0] @ Qm.T))
dv = zeros(DH//8)
for kk in range(BM//16):
    pa = acc_to_a(st[2*kk], st[2*kk+1])
    for nd in range(DH//16):
        b = ldmatrix_x4(dOm, addr_a(16*kk, 16*nd), trans=True)
        mma(dv[2*nd], pa, [x[0] for x in b], [x[1] for x in b])
        mma(dv[2*nd+1], pa, [x[2] for x in b], [x[3] for x in b])
print("dkdv dV err", (gather(dv)).maxdiff(ST @ dOm))
