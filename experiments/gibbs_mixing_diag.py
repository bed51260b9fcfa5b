import sys, time, os
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, "/work/wt-mix/experiments")
import numpy as np, arviz as az, xarray as xr
import bnmf
from calibration_gibbs import simulate, coverage
gen = sys.argv[1]; F, N, K = (int(v) for v in sys.argv[2].split("x"))
extra = eval(sys.argv[3]) if len(sys.argv) > 3 else {}
X, W, H, _ = simulate(gen, F, N, K, 0)
t = time.perf_counter()
opts = dict(num_chains=4, num_warmup=300, num_samples=300); opts.update(extra)
fit = bnmf.fit(X, K, model="poisson-hierarchical", method="gibbs", seed=0, **opts)
sec = time.perf_counter() - t
d = fit.idata.posterior["W"].values  # chain, draw, F, K
C = d.shape[0]
ds = xr.Dataset({"W": (("chain", "draw", "f", "k"), d)})
rhat = az.rhat(ds)["W"].values; ess = az.ess(ds)["W"].values
print(f"{gen} {F}x{N}r{K} {extra} sec={sec:.0f} rhat_ok={np.mean(rhat<=1.01):.3f} median_rhat={np.median(rhat):.3f} ess_med={np.median(ess):.0f} ess_p5={np.percentile(ess,5):.0f}", coverage(fit, W, H))
for c in range(C):
    dc = xr.Dataset({"W": (("chain", "draw", "f", "k"), d[c:c+1])})
    print(" chain", c, "within split-rhat ok", f"{np.mean(az.rhat(dc)['W'].values<=1.01):.3f}", "ess med", f"{np.median(az.ess(dc)['W'].values):.0f}")
m = d.mean(axis=1); sd = d.std(axis=(0, 1))
for c in range(1, C):
    z = np.abs(m[c] - m[0]) / sd
    print(" chain", c, "vs 0: |mean diff|/sd median", f"{np.median(z):.2f}", "max", f"{z.max():.1f}", "per comp median", np.round(np.median(z, axis=0), 2))
# per-component ess
print(" ess per component median", np.round(np.median(ess, axis=0)))
for name in ("a_W", "b_W", "a_H"):
    if name in fit.idata.posterior:
        v = fit.idata.posterior[name].values
        print(" ", name, "chain means", np.round(v.mean(axis=1), 2).tolist()[:2], "ess", np.round(az.ess(xr.Dataset({name: (("chain","draw","k"), v)}))[name].values))
