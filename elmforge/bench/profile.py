"""``elmforge bench --profile``: where a decode step's and a prompt's time goes (issue 19).

One ``model.generate()`` call runs under ``torch.profiler`` with every forward call marked as a
prefill or decode step, so each profiled op belongs to one step. Each step's wall time splits
into:

- ``matvec``: the products with the weights (elmforge's kernels, or ``aten::linear``/``mm``/...
  where they run); per weight shape: calls, bytes read per call, GB/s achieved;
- ``attention``: scaled-dot-product attention and the KV cache's update;
- ``elementwise``: every other op (norms, RoPE, SwiGLU, residual adds, reshapes, the code
  inductor fused them into on the compiled path);
- ``dispatch``: the forward's time not inside any op (Python, module calls, PyTorch dispatch,
  the preparation of the forward's inputs);
- ``generate_loop``: from the end of one forward to the start of the next (transformers' loop:
  logits processing, the token choice, stopping criteria, cache bookkeeping).

The profiler costs tens of microseconds per op, a large share of a 0.1 ms product, so beside the
profiled split :func:`unprofiled_split` times a plain decode step and the same step's products
alone: their difference is the honest time outside the products.

Decode figures are per token (the mean over the decode steps); prompt figures are for the one
prefill, with its products' GFLOP/s beside the machine's peak measured by a large matmul of the
same dtype with the same threads. The profiler's own cost lands mostly in ``dispatch``: compare
the split between paths and machines, not with the untimed rates.
"""

from __future__ import annotations

import time
from typing import Any

MATVEC_OPS = ("elmforge::linear_decode", "elmforge::linear_int8", "elmforge::linear_int4",
              "aten::linear", "aten::mm", "aten::addmm", "aten::bmm", "aten::matmul",
              "aten::_weight_int8pack_mm", "aten::mkldnn_linear", "mkldnn::_linear_pointwise",
              "elmforge::dequantize_int8_rows")  # fmt: skip
ATTENTION_OPS = ("aten::scaled_dot_product_attention", "aten::_scaled_dot_product",
                 "aten::index_copy_", "aten::index_copy")  # fmt: skip
CATEGORIES = ("matvec", "attention", "elementwise", "dispatch", "generate_loop")
STEP_MARK = "elmforge.step."


def _category(name: str) -> str | None:
    if name.startswith(MATVEC_OPS):
        return "matvec"
    if name.startswith(ATTENTION_OPS):
        return "attention"
    return None


def _weight_bytes(event: Any, weight_itemsize: int) -> int | None:
    """Bytes of the weight a product reads, from its recorded input shapes."""
    shapes = [s for s in (event.input_shapes or []) if s]
    name = event.name
    if name.startswith("elmforge::linear_int8") and len(shapes) >= 3:
        (n, k), _ = shapes[1], shapes[2]
        return n * k + 4 * n
    if name.startswith("elmforge::linear_int4") and len(shapes) >= 3:
        (n, half), scale = shapes[1], shapes[2]
        return n * half + 4 * n * (scale[1] if len(scale) > 1 else 1)
    if len(shapes) >= 2 and len(shapes[1]) == 2:
        n, k = shapes[1]
        return n * k * weight_itemsize
    return None


def _shape_key(event: Any) -> tuple[int, ...] | None:
    shapes = [s for s in (event.input_shapes or []) if s]
    return tuple(shapes[1]) if len(shapes) >= 2 else None


def _rows(event: Any) -> int:
    shapes = [s for s in (event.input_shapes or []) if s]
    if not shapes or not shapes[0]:
        return 0
    rows = 1
    for size in shapes[0][:-1]:
        rows *= size
    return rows


class _StepAccount:
    """Totals of one kind of step (prefill or decode), microseconds."""

    def __init__(self) -> None:
        self.steps = 0
        self.wall = 0.0
        self.loop = 0.0
        self.time = dict.fromkeys(("matvec", "attention", "elementwise"), 0.0)
        self.shapes: dict[tuple[int, ...], dict[str, float]] = {}

    def add_op(self, event: Any, weight_itemsize: int) -> float:
        """Account ``event`` (an op inside a step); returns its time."""
        category = _category(event.name)
        duration = event.time_range.elapsed_us()
        if category is None:
            nested = sum(self.add_op(child, weight_itemsize) for child in event.cpu_children)
            self.time["elementwise"] += duration - nested
            return duration
        self.time[category] += duration
        if category == "matvec":
            key = _shape_key(event)
            entry = self.shapes.setdefault(
                key, {"calls": 0, "us": 0.0, "bytes": 0, "flops": 0, "name": event.name}
            )
            entry["calls"] += 1
            entry["us"] += duration
            nbytes = _weight_bytes(event, weight_itemsize) or 0
            entry["bytes"] += nbytes
            if key and len(key) == 2:
                k = key[1] * (2 if "int4" in event.name else 1)
                entry["flops"] += 2 * _rows(event) * key[0] * k
        return duration

    def summary(self, per: int) -> dict[str, Any]:
        per = max(1, per)
        ops = sum(self.time.values())
        split = {name: value / per / 1e3 for name, value in self.time.items()}
        split["dispatch"] = max(0.0, (self.wall - ops) / per / 1e3)
        split["generate_loop"] = self.loop / per / 1e3
        shapes = []
        for key, entry in sorted(self.shapes.items(), key=lambda kv: -kv[1]["us"]):
            seconds = entry["us"] / 1e6
            shapes.append(
                {
                    "weight_shape": list(key) if key else None,
                    "op": entry["name"],
                    "calls_per_step": entry["calls"] / per,
                    "ms_per_step": entry["us"] / per / 1e3,
                    "bytes_per_call": entry["bytes"] / max(1, entry["calls"]),
                    "gb_s": entry["bytes"] / seconds / 1e9 if seconds else None,
                    "gflop_s": entry["flops"] / seconds / 1e9 if seconds else None,
                }
            )
        return {"steps": self.steps, "ms_per_step": split, "step_ms": sum(split.values()),
                "products": shapes}  # fmt: skip


def profile_generate(
    model: Any, tokens: list[list[int]], new_tokens: int, weight_itemsize: int
) -> dict[str, Any]:
    """Profile one greedy ``model.generate`` call; the prefill's and the mean decode step's
    split (milliseconds) and the products per weight shape."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function
    from transformers import LogitsProcessorList

    ids = torch.tensor(tokens, device=model.device)
    # A step's span opens where transformers' loop prepares the forward's inputs and closes where
    # it processes the logits. Nothing the compiled decode step traced is touched (patching
    # forward or adding hooks would make dynamo compile again).
    open_step: list[Any] = []
    original = model.prepare_inputs_for_generation

    def opening(*args: Any, **kwargs: Any) -> Any:
        kind = "decode" if open_step else "prefill"
        span = record_function(f"{STEP_MARK}{kind}")
        span.__enter__()
        open_step[:] = [span]
        return original(*args, **kwargs)

    def closing(input_ids: Any, scores: Any) -> Any:
        if open_step and open_step[0] is not None:
            open_step[0].__exit__(None, None, None)
            open_step[0] = None
        return scores

    model.prepare_inputs_for_generation = opening
    try:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                           logits_processor=LogitsProcessorList([closing]))  # fmt: skip
    finally:
        del model.prepare_inputs_for_generation  # the class's method again
    steps = sorted(
        (e for e in prof.events() if e.name.startswith(STEP_MARK)),
        key=lambda e: e.time_range.start,
    )
    accounts = {"prefill": _StepAccount(), "decode": _StepAccount()}
    previous_end = None
    for step in steps:
        account = accounts[step.name.removeprefix(STEP_MARK)]
        account.steps += 1
        account.wall += step.time_range.elapsed_us()
        if previous_end is not None and step.name.endswith("decode"):
            account.loop += step.time_range.start - previous_end
        previous_end = step.time_range.end
        for child in step.cpu_children:
            account.add_op(child, weight_itemsize)
    decode = accounts["decode"]
    return {
        "prefill": accounts["prefill"].summary(1),
        "decode": decode.summary(decode.steps),
        "prompt_tokens": ids.numel(),
    }


def unprofiled_split(model: Any, tokens: list[list[int]], new_tokens: int) -> dict[str, float]:
    """Without the profiler (whose cost per op is large beside a 0.1 ms product): the mean decode
    step of a plain ``generate`` and the time of the same step's products alone (every linear
    layer once, in turn, with a batch of one-token rows), best of three; their difference is
    the time a step spends outside the products."""
    import torch
    from torch import nn

    from elmforge.model.decoding import time_decode_step

    ids = torch.tensor(tokens, device=model.device)
    step = time_decode_step(model, ids, new_tokens) or float("nan")
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    layers = [m for m in model.modules() if isinstance(m, nn.Linear) or hasattr(m, "qweight")]
    inputs = [torch.randn(ids.shape[0], 1, m.in_features, dtype=dtype) for m in layers]
    products = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for layer, x in zip(layers, inputs):
            layer(x)
        products = min(products, time.perf_counter() - start)
    return {"step_ms": step * 1e3, "products_alone_ms": products * 1e3,
            "outside_products_ms": (step - products) * 1e3}  # fmt: skip


def peak_gflops(dtype: Any, threads: int, size: int = 2048, repeats: int = 3) -> float:
    """The machine's matrix-product rate in ``dtype`` with ``threads`` threads: the best of a
    few (size x size) @ (size x size) products."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(size, size).to(dtype)
        b = torch.randn(size, size).to(dtype)
        a @ b  # warm-up (oneDNN builds its kernel once)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 2 * size**3 / best / 1e9


def profile_markdown(profiles: list[dict[str, Any]]) -> list[str]:
    """``bench.md``'s profile section: the split per engine, then the products per shape."""
    lines = ["", "## Profile (one profiled generate per engine, batch of the smallest size)", "",
             "Milliseconds per decode step (per token) and for the prefill; `dispatch` is the "
             "forward's time outside any op (Python, module calls, PyTorch dispatch; the "
             "profiler's own cost lands there), `loop` transformers' generate loop between "
             "forwards.", "",
             "| engine | dtype | step | products | attention | elementwise | dispatch | loop "
             "| total | products GB/s | products GFLOP/s (peak) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for p in profiles:
        if "error" in p:
            lines.append(f"| {p['engine']} | {p['dtype']} | failed: {p['error']} |")
            continue
        for step in ("decode", "prefill"):
            s = p[step]
            ms = s["ms_per_step"]
            nbytes = sum(x["bytes_per_call"] * x["calls_per_step"] for x in s["products"])
            gb_s = nbytes / (ms["matvec"] / 1e3) / 1e9 if ms["matvec"] else 0.0
            flops = sum((x["gflop_s"] or 0) * x["ms_per_step"] / 1e3 for x in s["products"])
            gflop_s = flops / (ms["matvec"] / 1e3) if ms["matvec"] else 0.0
            cells = " | ".join(f"{ms[c]:.2f}" for c in CATEGORIES)
            lines.append(
                f"| {p['engine']} | {p['dtype']} | {step} | {cells} | {s['step_ms']:.2f} "
                f"| {gb_s:.1f} | {gflop_s:.0f} ({p['peak_gflop_s']:.0f} {p['peak_dtype']}) |"
            )
    lines += ["", "Without the profiler (its cost per op is large beside a 0.1 ms product): the "
              "mean decode step, the same step's products alone, and the difference.", "",
              "| engine | dtype | decode step ms | products alone ms | outside the products ms |",
              "|---|---|---:|---:|---:|"]  # fmt: skip
    for p in profiles:
        if "unprofiled" in p:
            u = p["unprofiled"]
            lines.append(f"| {p['engine']} | {p['dtype']} | {u['step_ms']:.2f} "
                         f"| {u['products_alone_ms']:.2f} | {u['outside_products_ms']:.2f} |")  # fmt: skip
    lines += ["", "Decode products per weight shape (first engine of each dtype):", "",
              "| engine | dtype | weight (out x in) | op | calls/step | ms/step | MB/call | GB/s |",
              "|---|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
    seen = set()
    for p in profiles:
        if "error" in p or p["dtype"] in seen:
            continue
        seen.add(p["dtype"])
        for x in p["decode"]["products"]:
            shape = " x ".join(map(str, x["weight_shape"] or []))
            lines.append(
                f"| {p['engine']} | {p['dtype']} | {shape} | {x['op']} "
                f"| {x['calls_per_step']:.0f} | {x['ms_per_step']:.2f} "
                f"| {x['bytes_per_call'] / 1e6:.2f} | {x['gb_s'] or 0:.1f} |"
            )
    return lines
