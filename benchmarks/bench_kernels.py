# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""GPU benchmark of the Triton selective scan and the fused SS2D core against the torch path on the same GPU.

Method: CUDA events around each call, median of ``--repeats`` timed runs after ``--warmup`` runs. Forward runs
under ``torch.no_grad()``; forward+backward computes every input gradient with ``torch.autograd.grad``. The scan
kernel's achieved memory bandwidth (minimal bytes moved / kernel time) is compared with the measured device-to-device
copy bandwidth (the roofline of a memory-bound kernel).

Optional comparison with the original implementation (never vendored here): pass ``--original-path`` pointing at
the original repository's ``classification/models`` folder on a machine where its CUDA extension
``selective_scan_cuda_oflex`` has been built and installed; its ``selective_scan_fn`` and Triton
``cross_scan_fn``/``cross_merge_fn`` are then timed on the same inputs.

    python benchmarks/bench_kernels.py                    # all cases, fp32 and bf16, writes RESULTS_gpu.md
    python benchmarks/bench_kernels.py --sweep            # also try launch configs of the Triton kernels
    python benchmarks/bench_kernels.py --cases scan-v2v-T-s1 --dtypes bf16 --no-write
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import (  # noqa: E402
    copy_bandwidth_gbs,
    cuda_time_ms,
    environment,
    environment_markdown,
    markdown_table,
    require_cuda,
    write_section,
)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# name: (batch, K, channels per direction, d_state, L). VMamba-T at 224: stage 1 is 56x56 (L=3136), stage 3 14x14.
SCAN_CASES = {
    "scan-v2v-T-s1": (128, 4, 96, 1, 3136),  # vmamba-tiny-s1l8, stage 1 (ssm ratio 1, d_state 1)
    "scan-v2v-T-s3": (128, 4, 384, 1, 196),
    "scan-v0-T-s1": (128, 4, 192, 16, 3136),  # vanilla-vmamba-tiny, stage 1 (ssm ratio 2, d_state 16)
    "scan-long-L16384": (8, 4, 96, 1, 16384),  # 128x128 feature map
}
# name: (batch, channels, d_state, H, W)
SS2D_CASES = {
    "ss2d-v2v-T-s1": (128, 96, 1, 56, 56),
    "ss2d-v0-T-s1": (128, 192, 16, 56, 56),
    "ss2d-highres-128x128": (8, 96, 1, 128, 128),
}
SWEEP_CONFIGS = [
    (bd, ch, nw)
    for bd in (2, 4, 8, 16, 32)
    for ch in (32, 64, 128, 256)
    for nw in (4, 8)
    if 512 <= bd * ch <= 8192
]


def scan_inputs(case, dtype, device, requires_grad=False):
    batch, groups, dg, n, length = case
    ch = groups * dg
    g = torch.Generator(device=device).manual_seed(0)

    def rnd(*shape, scale=1.0, shift=0.0, dt=dtype):
        return (torch.randn(*shape, generator=g, device=device) * scale + shift).to(dt)

    tensors = [
        rnd(batch, ch, length),
        rnd(batch, ch, length, scale=0.5, shift=-1.0),
        -torch.rand(ch, n, generator=g, device=device) * n - 0.5,
        rnd(batch, groups, n, length),
        rnd(batch, groups, n, length),
        rnd(ch, dt=torch.float32),
        rnd(ch, scale=0.3, dt=torch.float32),
    ]
    return [t.requires_grad_(requires_grad) for t in tensors]


def ss2d_inputs(case, dtype, device, requires_grad=False):
    batch, d, n, h, w = case
    g = torch.Generator(device=device).manual_seed(0)

    def rnd(*shape, scale=1.0, shift=0.0, dt=dtype):
        return (torch.randn(*shape, generator=g, device=device) * scale + shift).to(dt)

    tensors = [
        rnd(batch, d, h, w),
        rnd(batch, 4, d, h, w, scale=0.5, shift=-1.0),
        -torch.rand(4 * d, n, generator=g, device=device) * n - 0.5,
        rnd(batch, 4, n, h, w),
        rnd(batch, 4, n, h, w),
        rnd(4 * d, dt=torch.float32),
        rnd(4 * d, scale=0.3, dt=torch.float32),
    ]
    return [t.requires_grad_(requires_grad) for t in tensors]


def load_original(path: str | None):
    """The original's selective_scan_fn / cross_scan_fn / cross_merge_fn when its CUDA extension is importable."""
    if not path:
        return None, "not requested (--original-path)"
    sys.path.insert(0, path)
    try:
        csms6s = importlib.import_module("csms6s")
        csm_triton = importlib.import_module("csm_triton")
    except Exception as err:  # any import failure means: not comparable here
        return None, f"import failed: {type(err).__name__}: {err}"
    if not getattr(csms6s, "WITH_SELECTIVESCAN_OFLEX", False):
        return None, "selective_scan_cuda_oflex is not importable"
    return (csms6s.selective_scan_fn, csm_triton.cross_scan_fn, csm_triton.cross_merge_fn), "selective_scan_cuda_oflex"


def time_impl(fn, make_inputs, mode, warmup, repeats):
    """Median ms of fn in 'fwd' or 'fwd+bwd' mode; 'OOM' / error text when it cannot run."""
    try:
        inputs = make_inputs(mode == "fwd+bwd")
        if mode == "fwd":

            def run():
                with torch.no_grad():
                    fn(*inputs)

        else:
            with torch.no_grad():
                grad_out = torch.randn_like(fn(*inputs).float())
            leaves = [t for t in inputs if t.requires_grad]

            def run():
                torch.autograd.grad(fn(*inputs), leaves, grad_out)

        return cuda_time_ms(run, warmup=warmup, repeats=repeats)["median_ms"]
    except torch.cuda.OutOfMemoryError:
        return "OOM"
    except Exception as err:
        return f"error: {type(err).__name__}: {str(err)[:80]}"
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def fmt(value):
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def ratio(base, other):
    return f"{base / other:.2f}x" if isinstance(base, float) and isinstance(other, float) else "-"


def scan_bytes(case, dtype, n_chunks):
    batch, groups, dg, n, length = case
    ch, elt = groups * dg, torch.tensor([], dtype=dtype).element_size()
    fwd = elt * 2 * batch * ch * length + elt * 2 * batch * groups * n * length + 4 * batch * ch * length
    # forward (inference): read u, delta, B, C; write y (fp32).
    # backward: read u, delta, B, C, dy (fp32), chunk states; write du, ddelta (fp32), dB, dC (fp32)
    bwd = elt * 2 * batch * ch * length + elt * 2 * batch * groups * n * length + 4 * batch * ch * length
    bwd += 4 * batch * ch * n * n_chunks + 4 * 2 * batch * ch * length + 4 * 2 * batch * groups * n * length
    return fwd, bwd


def kernel_roofline(case, dtype, device, copy_bw, warmup, repeats):
    """Time the forward and backward Triton kernels alone and relate their bandwidth to the copy roofline."""
    from vmamba_kernels import ops

    u, delta, A, B, C, D, bias = scan_inputs(case, dtype, device)
    # The inference forward (no chunk states stored), then the states a training forward keeps for the backward.
    fwd_ms = cuda_time_ms(
        lambda: ops.selective_scan_fwd(u, delta, A, B, C, D, bias, True, False), warmup=warmup, repeats=repeats
    )
    y, states = ops.selective_scan_fwd(u, delta, A, B, C, D, bias, True, True)
    dy = torch.randn_like(y)
    bwd_ms = cuda_time_ms(
        lambda: ops.selective_scan_bwd(dy, u, delta, A, B, C, D, bias, states, True), warmup=warmup, repeats=repeats
    )
    fwd_bytes, bwd_bytes = scan_bytes(case, dtype, states.shape[3])
    out = {}
    for name, stats, n_bytes in (("fwd", fwd_ms, fwd_bytes), ("bwd", bwd_ms, bwd_bytes)):
        gbs = n_bytes / (stats["median_ms"] * 1e-3) / 1e9
        out[name] = (stats["median_ms"], gbs, 100 * gbs / copy_bw)
    return out


def sweep(case, dtype, device, warmup, repeats):
    from vmamba_kernels import ops

    u, delta, A, B, C, D, bias = scan_inputs(case, dtype, device)
    results = []
    for config in SWEEP_CONFIGS:
        ops.CONFIG_OVERRIDE = config
        try:
            fwd = cuda_time_ms(
                lambda: ops.selective_scan_fwd(u, delta, A, B, C, D, bias, True, False), warmup=warmup, repeats=repeats
            )
            y, states = ops.selective_scan_fwd(u, delta, A, B, C, D, bias, True, True)
            dy = torch.randn_like(y)
            bwd = cuda_time_ms(
                lambda: ops.selective_scan_bwd(dy, u, delta, A, B, C, D, bias, states, True), warmup=warmup, repeats=repeats
            )
            results.append((config, fwd["median_ms"], bwd["median_ms"]))
        except Exception as err:  # a config the compiler rejects (e.g. out of shared memory) is just skipped
            print(f"  config {config}: {type(err).__name__}: {str(err)[:100]}")
        finally:
            ops.CONFIG_OVERRIDE = None
    return sorted(results, key=lambda r: r[1] + r[2])


def check_against_torch(kernel_fn, torch_fn, inputs):
    """Max difference relative to the torch path's largest magnitude (text, since the torch path may run out of memory)."""
    try:
        with torch.no_grad():
            a, b = kernel_fn(*inputs).float(), torch_fn(*inputs).float()
        return f"{((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item():.2e}"
    except torch.cuda.OutOfMemoryError:
        return "not checked (torch path out of memory)"
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=list(SCAN_CASES) + list(SS2D_CASES))
    parser.add_argument("--dtypes", nargs="*", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--modes", nargs="*", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--original-path", default=None, help="the original's classification/models folder")
    parser.add_argument("--sweep", action="store_true", help="time every launch config of SWEEP_CONFIGS")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update RESULTS_gpu.md")
    parser.add_argument("--smoke", action="store_true", help="check this script on tiny shapes (CPU: TRITON_INTERPRET=1)")
    args = parser.parse_args()

    device = require_cuda("bench_kernels.py", smoke=args.smoke)
    if args.smoke:
        SCAN_CASES.update({name: (1, 2, 3, case[3], 40) for name, case in SCAN_CASES.items()})
        SS2D_CASES.update({name: (1, 3, case[2], 5, 7) for name, case in SS2D_CASES.items()})
        SWEEP_CONFIGS[:] = SWEEP_CONFIGS[:2]
        args.warmup, args.repeats, args.no_write = 0, 1, True
    import vmamba_kernels

    if not vmamba_kernels.is_available():
        raise SystemExit(f"bench_kernels.py: the Triton kernels cannot run: {vmamba_kernels.unavailable_reason()}")
    from transformers_vmamba import selective_scan as torch_scan

    chunked = getattr(torch_scan, "selective_scan_chunked", None)
    ss2d_torch = getattr(torch_scan, "ss2d_selective_scan_torch", None)
    original, original_note = load_original(args.original_path)

    env = environment()
    copy_bw = copy_bandwidth_gbs()
    print(environment_markdown(env), f"\ncopy bandwidth: {copy_bw:.0f} GB/s", flush=True)

    def materialised_triton(x, dts, A, Bs, Cs, D, bias):
        """cross-scan copies + Triton scan + cross-merge: what the fused kernel avoids."""
        b, d, h, w = x.shape
        route = lambda t: torch.stack([torch_scan.cross_scan(t[:, k])[:, k] for k in range(4)], dim=1)  # noqa: E731
        y = vmamba_kernels.selective_scan(
            torch_scan.cross_scan(x).reshape(b, 4 * d, h * w), route(dts).reshape(b, 4 * d, h * w), A, route(Bs),
            route(Cs), D, bias,
        )  # fmt: skip
        return torch_scan.cross_merge(y.view(b, 4, d, h * w), h, w).view(b, d, h, w)

    def original_ss2d(x, dts_r, A, Bs_r, Cs_r, D, bias):
        """The original's SS2D core: Triton cross-scan, CUDA selective scan (oflex), Triton cross-merge."""
        scan_fn, cross_scan_fn, cross_merge_fn = original
        b, d, h, w = x.shape
        xs = cross_scan_fn(x)
        ys = scan_fn(xs.reshape(b, 4 * d, h * w), dts_r, A, Bs_r, Cs_r, D, bias, True, oflex=True)
        return cross_merge_fn(ys.view(b, 4, d, h, w)).view(b, d, h, w)

    scan_rows, ss2d_rows, roofline_rows, sweep_text, checks = [], [], [], [], []
    for name in args.cases:
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            if name in SCAN_CASES:
                case = SCAN_CASES[name]
                make = lambda grad, case=case, dtype=dtype: scan_inputs(case, dtype, device, grad)  # noqa: E731
                if chunked is not None:
                    err = check_against_torch(vmamba_kernels.selective_scan, chunked, make(False))
                    checks.append(f"{name} {dtype_name}: max rel. difference Triton vs torch chunked = {err}")
                for mode in args.modes:
                    tri = time_impl(vmamba_kernels.selective_scan, make, mode, args.warmup, args.repeats)
                    tor = time_impl(chunked, make, mode, args.warmup, args.repeats) if chunked else "absent"
                    orig = (
                        time_impl(lambda *t: original[0](*t, True, oflex=True), make, mode, args.warmup, args.repeats)
                        if original else "-"
                    )  # fmt: skip
                    scan_rows.append([name, dtype_name, mode, fmt(tri), fmt(tor), ratio(tor, tri), fmt(orig), ratio(orig, tri)])
                    print(scan_rows[-1], flush=True)
                roof = kernel_roofline(case, dtype, device, copy_bw, args.warmup, args.repeats)
                for kernel, (ms, gbs, pct) in roof.items():
                    roofline_rows.append([name, dtype_name, kernel, f"{ms:.3f}", f"{gbs:.0f}", f"{pct:.0f}%"])
                if args.sweep:
                    best = sweep(case, dtype, device, 2, 5)
                    sweep_text.append(
                        f"- {name} {dtype_name}: best (BLOCK_D, CHUNK, num_warps) by fwd+bwd kernel time: "
                        + ", ".join(f"{c} {f:.3f}+{b:.3f} ms" for c, f, b in best[:5])
                    )
                    print(sweep_text[-1], flush=True)
            elif name in SS2D_CASES:
                case = SS2D_CASES[name]
                make = lambda grad, case=case, dtype=dtype: ss2d_inputs(case, dtype, device, grad)  # noqa: E731
                if ss2d_torch is not None:
                    err = check_against_torch(vmamba_kernels.ss2d_selective_scan, ss2d_torch, make(False))
                    checks.append(f"{name} {dtype_name}: max rel. difference fused Triton vs torch = {err}")

                def make_routed(grad, case=case, dtype=dtype):
                    x, dts, A, Bs, Cs, D, bias = ss2d_inputs(case, dtype, device, False)
                    b, d, h, w = x.shape
                    route = lambda t: torch.stack([torch_scan.cross_scan(t[:, k])[:, k] for k in range(4)], 1)  # noqa: E731
                    tensors = [x, route(dts).reshape(b, 4 * d, h * w).contiguous(), A, route(Bs).contiguous(),
                               route(Cs).contiguous(), D, bias]  # fmt: skip
                    return [t.requires_grad_(grad) for t in tensors]

                for mode in args.modes:
                    fused = time_impl(vmamba_kernels.ss2d_selective_scan, make, mode, args.warmup, args.repeats)
                    mat = time_impl(materialised_triton, make, mode, args.warmup, args.repeats)
                    tor = time_impl(ss2d_torch, make, mode, args.warmup, args.repeats) if ss2d_torch else "absent"
                    orig = time_impl(original_ss2d, make_routed, mode, args.warmup, args.repeats) if original else "-"
                    ss2d_rows.append([name, dtype_name, mode, fmt(fused), fmt(mat), fmt(tor), ratio(tor, fused), fmt(orig), ratio(orig, fused)])
                    print(ss2d_rows[-1], flush=True)
            else:
                raise SystemExit(f"unknown case {name!r}; known: {', '.join(list(SCAN_CASES) + list(SS2D_CASES))}")

    body = [
        "## Kernels (`benchmarks/bench_kernels.py`)",
        "",
        environment_markdown(env),
        f"- measured device copy bandwidth (read+write): {copy_bw:.0f} GB/s",
        f"- original implementation: {'compared' if original else 'not compared'} ({original_note})",
        f"- method: CUDA events, median of {args.repeats} runs after {args.warmup} warm-up runs; fwd under no_grad, "
        "fwd+bwd = forward + torch.autograd.grad of every input",
        "",
        "### Selective scan (ms; speed-up = other / Triton)",
        "",
        markdown_table(["case", "dtype", "mode", "Triton", "torch chunked", "speed-up vs torch", "original CUDA", "speed-up vs original"], scan_rows),
        "",
        "### Scan kernels against the copy roofline (minimal bytes / kernel time)",
        "",
        markdown_table(["case", "dtype", "kernel", "ms", "GB/s", "% of copy bandwidth"], roofline_rows),
        "",
        "### SS2D core (ms; cross-scan + scan + cross-merge)",
        "",
        markdown_table(
            ["case", "dtype", "mode", "fused Triton", "copies + Triton scan", "torch", "speed-up vs torch", "original", "speed-up vs original"],
            ss2d_rows,
        ),
        "",
        "### Checks",
        "",
        *[f"- {c}" for c in checks],
        *([""] + ["### Launch-config sweep", ""] + sweep_text if sweep_text else []),
    ]  # fmt: skip
    text = "\n".join(body)
    print(text)
    if not args.no_write:
        write_section("kernels", text)


if __name__ == "__main__":
    main()
