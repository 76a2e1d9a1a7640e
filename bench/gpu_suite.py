"""One GPU suite: every GPU benchmark of x2i in one run, under a hard time budget, into one JSON and one table.

Run through bench/gpu_suite.sh (it installs the travelling wheels and puts x2i on the path from the checkout):
    bash bench/gpu_suite.sh OUT_DIR            # the GPU run (~6 min on one H200, hard budget 9 min)
    bash bench/gpu_suite.sh --smoke OUT_DIR    # every section at tiny size on CPU (~2 min on 2 cores)

Each section is one of the existing bench scripts, run as its own process group with its own time cap, writing
its figures with --json; a section that fails or runs out of time is recorded as {"section", "error", ...} (with
whatever figures it had written by then) and the next one runs. OUT_DIR/gpu_suite.json is rewritten after every
section, so even a suite killed from outside leaves what it had.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"

# Hard budget of the whole `bash bench/gpu_suite.sh` (9 min) minus slack for the wheel install and writing.
BUDGET_S = {"gpu": 530, "smoke": 600}


@dataclass
class Section:
    name: str
    cap_s: int  # this section's own time limit
    argv: list[str]  # script and arguments; the suite adds --json
    json_flag: str = "--json"
    floor_s: int = 0  # time kept back for this section while earlier ones run (see time_for)
    notes: dict = field(default_factory=dict)


def sections(smoke: bool, out: Path, proofs: list[str | None]) -> list[Section]:
    """What runs, in order. GPU sizes are the real ones (see docs/benchmarks.md, "GPU suite"); smoke sizes only
    check that every section still runs end to end and produces numbers."""
    work = out / "work"
    if smoke:
        inference = ["model_inference.py", "--preset", "small", "--size", "64", "--steps", "2", "--device", "cpu",
                     "--dtype", "fp32", "--vae", "tiny", "--diffusers", "--repeats", "1"]
        train = ["bench_train_throughput.py", "--device", "cpu", "--preset", "small", "--size", "128", "--batch", "2",
                 "--steps", "3", "--warmup", "1", "--workers", "0", "--checkpointing", "both", "--limit", "40"]
        # controlnet_aux networks have fixed (large) sizes and take ~10 s an image on 2 cores: smoke runs the
        # transformers ones at tiny size (seg_upernet still imports controlnet_aux for its palette).
        annot = ["annotators.py", "models", "--device", "cpu", "--batch", "2", "--images", "2", "--size", "64",
                 "--weights-size", "tiny", "--names", "depth_anything,seg_upernet,sam"]
        curation = ["curation_bench.py", "--device", "cpu", "--arch", "tiny", "--images", "4", "--batch", "2",
                     "--size", "64", "--repeat", "1"]
        learning = ["bench_learning.py", "--device", "cpu", "--steps", "6", "--prompts", "6", "--sample-steps", "2",
                    "--limit", "150"]
        caps = dict(inference=90, train=90, annotators=90, curation=60, learning=270)  # 3 toy proofs, ~35-60 s each
    else:
        # OmniGen-v1's shape (3.8B, bf16), SDXL-shaped VAE, 1024^2, 50 steps, one timed run per case (a GPU is
        # steady), ours and diffusers' pipeline on the same weights.
        inference = ["model_inference.py", "--preset", "omnigen-v1", "--size", "1024", "--steps", "50",
                     "--device", "cuda", "--dtype", "bf16", "--vae", "sdxl", "--diffusers", "--repeats", "1"]
        # The training benchmark: 1.0B model at 512^2 (1024 output tokens), bf16, the real loader with
        # 8 workers. Checkpointing off only: on the H200 one setting takes ~95 s with its data build and trainer
        # start-up (first run, 2026-11-30), and two did not fit the section's share of the 9 minutes.
        train = ["bench_train_throughput.py", "--device", "cuda", "--preset", "1b", "--size", "512", "--batch", "8",
                 "--steps", "40", "--workers", "8", "--checkpointing", "off"]
        annot = ["annotators.py", "models", "--device", "cuda", "--batch", "16", "--images", "32", "--size", "512"]
        # ViT-L/14: the aesthetic predictor's real backbone.
        curation = ["curation_bench.py", "--device", "cuda", "--arch", "ViT-L-14", "--images", "128", "--batch", "64",
                    "--repeat", "1"]
        # The proof at GPU scale: the shapes mix with twice the CPU run's batch (32 rows, the setting that also
        # started learning shapes on CPU), 2000 steps, loader workers on the GPU node's cores, 192 prompts.
        # The proof mixes now train 4000-7000 steps (CPU, ~20 min each); a step of this 1M-parameter model takes
        # ~68 ms on the H200 too (overhead-bound), so within the suite's 9 minutes each proof gets 600 steps: a
        # check that every proof runs end to end at GPU scale, not the proof's figure (docs/benchmarks.md).
        learning = ["bench_learning.py", "--device", "cuda", "--steps", "600", "--set", "loader.batch_size=32",
                    "--set", "loader.num_workers=6", "--prompts", "192"]
        # From the first H200 run: inference 117 s, training 95 s, annotators 50 s, curation 34 s, and the
        # default proof ~170 s (2000 steps in 137 s, then 192 prompts generated and checked).
        caps = dict(inference=125, train=105, annotators=65, curation=45, learning=180)
    # The GPU machine has no tensorboard (x2i train writes event files by default): the log.jsonl is enough here.
    learning += ["--set", "tensorboard=false"]
    out_list = [
        Section("preflight", 60, ["gpu_suite.py", "--preflight"], json_flag="--out", floor_s=20),
        Section("inference", caps["inference"], inference, floor_s=caps["inference"] // 2),
        Section("train_throughput", caps["train"], train + ["--work", str(work / "train")], floor_s=caps["train"] // 2),
        Section("annotators", caps["annotators"], annot, floor_s=caps["annotators"] // 2),
        Section("curation", caps["curation"], curation, floor_s=caps["curation"] // 2),
    ]
    # Every proof bench_learning.py offers shares the learning budget; each gets its own work folder.
    for proof in proofs:
        label = proof or "default"
        argv = learning + ["--work", str(work / f"learning-{label}"), "--retrain"]
        if proof:
            argv += ["--proof", proof]
        cap = max(60, caps["learning"] // len(proofs))
        out_list.append(Section(f"learning:{label}", cap, argv, floor_s=cap // 2, notes={"proof": label}))
    return out_list


def learning_proofs(python: str, script: Path = BENCH / "bench_learning.py") -> tuple[list[str | None], str]:
    """The proofs bench_learning.py supports, read from its --help (`--proof {a,b}`): each one runs, so a new
    proof joins the suite without editing it. Without a --proof option: its single proof (text -> colour)."""
    try:
        text = subprocess.run([python, str(script), "--help"], capture_output=True, text=True,
                              timeout=60, cwd="/").stdout
    except Exception as e:  # the learning sections will fail on their own and say why
        return [None], f"--help failed: {e}"
    if "--proof" not in text:
        return [None], "no --proof option: the default proof (text -> colour)"
    match = re.search(r"--proof\s+\{([^}]*)\}", text)
    if not match:
        return [None], "--proof has no listed choices: the default proof only"
    return [p.strip() for p in match.group(1).split(",") if p.strip()], "from --proof choices"


def stamp(t0: float) -> str:
    return f"[{time.strftime('%H:%M:%S')} +{time.time() - t0:5.0f}s]"


def run_section(sec: Section, timeout: float, out: Path, python: str, t0: float) -> dict:
    """Run one section's script in its own process group (DataLoader workers and `x2i build` children included,
    so a timeout kills them all), echoing its output with timestamps and keeping a full log."""
    json_path = out / "sections" / f"{sec.name.replace(':', '-')}.json"
    json_path.unlink(missing_ok=True)
    log_path = out / "logs" / f"{sec.name.replace(':', '-')}.log"
    cmd = [python, str(BENCH / sec.argv[0]), *sec.argv[1:], sec.json_flag, str(json_path)]
    print(f"{stamp(t0)} == {sec.name}: start (cap {timeout:.0f} s): {' '.join(cmd[1:])}", flush=True)
    start = time.time()
    with open(log_path, "w") as log:
        # cwd outside the checkout: `python -m x2i.cli.main` (the bench scripts' builds) puts the cwd first on
        # sys.path, and the checkout's bare x2i/ would shadow the shim's x2i (which has model/, builders/, ...).
        proc = subprocess.Popen(cmd, cwd=out / "work", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", start_new_session=True)

        def pump():
            for line in proc.stdout:
                log.write(line)
                log.flush()
                print(f"{stamp(t0)} {sec.name}| {line.rstrip()[:300]}", flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=5)
                    break
                except subprocess.TimeoutExpired:
                    continue
            rc = proc.returncode
        reader.join(timeout=5)
    entry: dict = {"section": sec.name, "seconds": round(time.time() - start, 1), "cap_s": round(timeout),
                   "command": " ".join(cmd[1:]), **sec.notes}
    result = None
    if json_path.is_file():
        try:
            result = json.loads(json_path.read_text())
        except ValueError as e:
            entry["json_error"] = str(e)
    if timed_out or rc != 0 or result is None:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        why = (f"timed out after {timeout:.0f} s" if timed_out else f"exit status {rc}" if rc != 0
               else "wrote no figures")
        named = [line for line in tail if re.match(r"^\w+(\.\w+)*(Error|Exception|Interrupt)\b", line)]
        entry["error"] = why + ": " + ((named or tail)[-1][:500] if tail else "(no output)")
        entry["log_tail"] = tail
        if result is not None:
            entry["partial"] = result  # figures written before it stopped (per case / per setting / per model)
    else:
        entry["result"] = result
    print(f"{stamp(t0)} == {sec.name}: {'ERROR ' + entry['error'] if 'error' in entry else 'ok'} "
          f"({entry['seconds']} s)", flush=True)
    return entry


def time_for(i: int, secs: list[Section], deadline: float) -> float:
    """A section's limit: its own cap, but never eating the floors kept for the sections after it, nor the
    suite's deadline."""
    later = sum(s.floor_s for s in secs[i + 1:])
    return min(secs[i].cap_s, deadline - time.time() - later)


# ---- the table --------------------------------------------------------------------------------------------------

def _fmt(v, spec: str = ".2f") -> str:
    if v is None:
        return "-"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def markdown(report: dict) -> str:
    s = report["suite"]
    lines = [f"# GPU suite ({'smoke, CPU' if s['smoke'] else 'GPU'})", "",
             f"{s.get('device', '?')}; total {s.get('total_s', '?')} s of a {s['budget_s']} s budget; "
             f"started {s['started']}", "",
             "| section | figure | value |", "|---|---|---|"]
    for e in report["sections"]:
        name, r = e["section"], e.get("result") or e.get("partial") or {}
        rows: list[tuple[str, str]] = []
        if name == "preflight":
            rows += [("torch / CUDA", f"{r.get('torch')} / {r.get('cuda')}"),
                     ("GPU memory (GiB)", _fmt(r.get("gpu_memory_gib"), ".1f")),
                     ("imports missing", ", ".join(k for k, v in r.get("imports", {}).items() if "error" in v)
                      or "none")]
        elif name == "inference" and r:
            rows.append(("shape", f"{r.get('preset')} ({_fmt(r.get('params'), ',')} params), {r.get('size')}^2, "
                                  f"{r.get('steps')} steps, {r.get('dtype')}, VAE {r.get('vae')}"))
            for case, c in r.get("cases", {}).items():
                rows += [(f"{case}: ours s / peak GiB", f"{_fmt(c.get('ours_s'))} / {_fmt(c.get('ours_peak_gib'))}"),
                         (f"{case}: diffusers s / peak GiB",
                          f"{_fmt(c.get('diffusers_s'))} / {_fmt(c.get('diffusers_peak_gib'))}"),
                         (f"{case}: ratio ours / diffusers", _fmt(c.get("ratio"), ".3f"))]
            if r.get("diffusers_error"):
                rows.append(("diffusers comparison", "not run: " + r["diffusers_error"][:200]))
            if "check_text_to_image_guidance1_max_abs_diff" in r:
                rows.append(("same computation (guidance 1, max abs diff)",
                             _fmt(r["check_text_to_image_guidance1_max_abs_diff"], ".2g")))
        elif name == "train_throughput":
            for c in r if isinstance(r, list) else []:
                tag = f"{c['preset']} ckpt {c['checkpointing']}"
                rows += [(f"{tag}: tokens/s / samples/s", f"{c['tokens_per_s']:.0f} / {c['samples_per_s']:.2f}"),
                         (f"{tag}: MFU", _fmt(c.get("mfu"), ".1%")),
                         (f"{tag}: data wait / loader alone (samples/s)",
                          f"{c['data_wait_frac']:.1%} / {c['loader_only_samples_per_s']}"),
                         (f"{tag}: peak GiB", _fmt(c.get("peak_memory_gib")))]
        elif name == "annotators":
            for ann, cells in r.get("images_per_s", {}).items():
                rows += [(f"{ann} ({k.replace('_', ' ')}) img/s", _fmt(v)) for k, v in cells.items()]
        elif name == "curation":
            for step in ("aesthetic", "clip_score"):
                if step in r:
                    c = r[step]
                    rows.append((f"{step} ({r.get('arch')}, batch {r.get('batch')}) img/s",
                                 f"{c['batched_images_per_s']} (one by one {c['one_by_one_images_per_s']})"))
            if "dedup_hashing_images_per_s" in r:
                rows.append(("dedup hashing img/s (CPU)", _fmt(r["dedup_hashing_images_per_s"], ".1f")))
        elif name.startswith("learning") and r:
            acc = r.get("accuracy", {})
            rows += [("colour / shape / both", f"{_fmt(acc.get('color', r.get('colour_accuracy')), '.1%')} / "
                                               f"{_fmt(acc.get('shape', r.get('shape_accuracy')), '.1%')} / "
                                               f"{_fmt(acc.get('both'), '.1%')} of {acc.get('n', r.get('prompts'))}"),
                     ("train steps / final loss", f"{r.get('train', {}).get('steps', r.get('steps'))} / "
                                                  f"{r.get('train', {}).get('final_loss')}"),
                     ("seconds", ", ".join(f"{k} {v}" for k, v in r.get("seconds_detail", {}).items())
                      or str(r.get("seconds")))]
            if r.get("swap_follow_rate") is not None:
                rows.append(("swap ablation: follows the new input", _fmt(r["swap_follow_rate"], ".1%")))
            if r.get("unchanged_error") is not None:
                rows.append(("unchanged error (codec floor)", f"{r['unchanged_error']:.4f} ({r.get('codec_floor')})"))
        if "error" in e:
            rows.append(("ERROR" + (" (figures above: written before it stopped)" if "partial" in e else ""),
                         e["error"][:300].replace("|", "/")))
        rows.append(("section seconds", f"{e['seconds']} (cap {e['cap_s']})"))
        lines += [f"| {name} | {k} | {v} |" for k, v in rows]
    return "\n".join(lines) + "\n"


# ---- preflight ----------------------------------------------------------------------------------------------------

def preflight(path: Path) -> None:
    """What the machine has: versions, where each package comes from (the wheels in .whl/ or the machine), and
    whether x2i imports from this checkout."""
    import importlib
    import platform

    info: dict = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
                  "cpus": os.cpu_count(), "imports": {}}
    for mod in ("torch", "torchvision", "transformers", "diffusers", "controlnet_aux", "open_clip", "imagehash",
                "timm", "safetensors", "tokenizers", "pyarrow", "cv2", "skimage", "x2i", "x2i.model.omnigen",
                "x2i.annotators", "x2i.curation.scores"):
        try:
            m = importlib.import_module(mod)
            info["imports"][mod] = {"version": getattr(m, "__version__", None), "file": getattr(m, "__file__", None)}
        except Exception as e:
            info["imports"][mod] = {"error": f"{type(e).__name__}: {e}"}
    import torch

    info["torch"], info["cuda"] = torch.__version__, torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["device"], info["gpu_memory_gib"] = props.name, round(props.total_memory / 2**30, 1)
        # A quick bf16 matmul rate: what the GPU delivers here, to read the MFU figures against.
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            a @ a
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()
        info["bf16_matmul_tflops"] = round(20 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12, 1)
    else:
        info["device"], info["gpu_memory_gib"] = f"cpu x{os.cpu_count()}", None
    path.write_text(json.dumps(info, indent=1))
    print(json.dumps({k: v for k, v in info.items() if k != "imports"}))
    for mod, v in info["imports"].items():
        print(f"  {mod}: {v.get('version') or ''} {v.get('file') or v.get('error')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on CPU")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--preflight", action="store_true", help=argparse.SUPPRESS)  # the first section, in its own process
    ap.add_argument("--start", type=float, default=None, help="epoch seconds the suite started (gpu_suite.sh)")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the whole suite (default 510 GPU, 420 smoke)")
    ap.add_argument("--only", default="", help="comma-separated sections to run (preflight always runs), e.g. to "
                    "rerun the failed ones of a run: --only train_throughput,curation")
    args = ap.parse_args()
    if args.preflight:
        return preflight(args.out)

    t0 = args.start or time.time()
    budget = args.budget or BUDGET_S["smoke" if args.smoke else "gpu"]
    deadline = t0 + budget
    out = args.out.resolve()
    for sub in ("sections", "logs", "work"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    python = sys.executable
    proofs, how = learning_proofs(python)
    secs = sections(args.smoke, out, proofs)
    if args.only:
        wanted = {"preflight", *args.only.split(",")}
        secs = [s for s in secs if s.name in wanted or s.name.split(":")[0] in wanted]
    report: dict = {"suite": {"smoke": args.smoke, "budget_s": budget, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                              "python": python, "learning_proofs": [p or "default" for p in proofs],
                              "learning_proofs_found": how},
                    "sections": []}
    print(f"{stamp(t0)} GPU suite ({'smoke' if args.smoke else 'gpu'}), budget {budget:.0f} s, sections: "
          + ", ".join(s.name for s in secs), flush=True)

    def write():
        report["suite"]["total_s"] = round(time.time() - t0, 1)
        (out / "gpu_suite.json").write_text(json.dumps(report, indent=1))
        (out / "gpu_suite.md").write_text(markdown(report))

    for i, sec in enumerate(secs):
        limit = time_for(i, secs, deadline)
        if limit < 15:
            entry = {"section": sec.name, "error": f"skipped: {max(0.0, limit):.0f} s left of the suite's budget",
                     "seconds": 0, "cap_s": sec.cap_s}
            print(f"{stamp(t0)} == {sec.name}: {entry['error']}", flush=True)
        else:
            entry = run_section(sec, limit, out, python, t0)
        if sec.name == "preflight" and "result" in entry:
            report["suite"]["device"] = entry["result"].get("device")
        report["sections"].append(entry)
        write()
    errors = [e["section"] for e in report["sections"] if "error" in e]
    print(f"{stamp(t0)} done in {report['suite']['total_s']} s; "
          f"{'errors in ' + ', '.join(errors) if errors else 'every section ok'}", flush=True)
    print(f"{stamp(t0)} wrote {out / 'gpu_suite.json'} and {out / 'gpu_suite.md'}", flush=True)
    print((out / "gpu_suite.md").read_text(), flush=True)


if __name__ == "__main__":
    main()
