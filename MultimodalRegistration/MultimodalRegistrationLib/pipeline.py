"""The one entry point the CLI, the batch runner and the Slicer module call.

``run_case`` loads and validates every input first (nothing is written when an input is bad),
converts the coronal ceT1 to synthetic T2 with the translator, registers it to the axial T2,
applies the transform to the original ceT1 and the labels, and writes the output contract
(DESIGN.md) into ``out_dir``, each file atomically.
"""
from __future__ import annotations

import contextlib
import json
import platform
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import __version__, geometry, labels as labels_mod
from .contract import FUSED_CHANNELS, OUTPUT_FILES
from .errors import InputError
from .progress import ProgressFn, report
from .threads import cpu_share, torch_threads
from .volume import Volume, atomic_write, check_labels_match, load_volume, obliquity_deg, plane, save_volume


@dataclass
class Params:
    """Everything that changes the result (hashed by the batch runner to decide what is finished)."""

    method: str = "search-cr"            # search-cr (default) | search-ncc (alias: ours) | paper | mi
    translator: str = "default"          # default (bundled NICE-GAN) | none | path to .safetensors
    device: str = "auto"                 # auto | cpu | cuda
    seed: int = 0
    label_mode: str = "linear"           # linear (per-label linear + argmax) | nearest
    force_orientation: bool = False      # accept stacks whose direction cosines are not coronal/axial
    method_params: dict = field(default_factory=dict)
    polish: str = "auto"                 # MI refinement on the original ceT1, a reported last resort: auto
                                         # (search-ncc only, when its NCC result is flagged unsuccessful) |
                                         # always (search-ncc or search-cr) | never
    report_png: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def _load_inputs(coronal, axial, coronal_labels, axial_labels, params: Params):
    cor = load_volume(coronal, name=f"coronal ceT1 '{coronal}'")
    ax = load_volume(axial, name=f"axial T2 '{axial}'")
    if not params.force_orientation:
        for vol, want, what, path in ((cor, "coronal", "coronal ceT1", coronal), (ax, "axial", "axial T2", axial)):
            got = plane(vol)
            if got != want:
                raise InputError(
                    f"{what} '{path}' has {got} slices according to its direction cosines "
                    f"(slice normal {np.round(vol.direction[:, int(np.argmax(vol.spacing))], 2).tolist()}); "
                    f"pass --force-orientation if the header is wrong and the stack really is {want}")
    cl = al = None
    if coronal_labels:
        cl = load_volume(coronal_labels, labels=True, name=f"coronal labels '{coronal_labels}'")
        check_labels_match(cl, cor, f"coronal labels '{coronal_labels}'", "the coronal ceT1")
    if axial_labels:
        al = load_volume(axial_labels, labels=True, name=f"axial labels '{axial_labels}'")
        check_labels_match(al, ax, f"axial labels '{axial_labels}'", "the axial T2")
    return cor, ax, cl, al


def _import_engine_modules(method: str) -> None:
    """Imports what the translator and ``method`` need (torch, the method's modules and their lazy
    imports: :func:`~.registration.preload`) ahead of their first use. Any failure is left to that first
    use to report."""
    try:
        import torch  # noqa: F401

        from . import registration, translate  # noqa: F401
        registration.preload(method)
    except Exception:   # noqa: BLE001 - reported where the module is used
        pass


def _from_engine_modules(filename: str) -> bool:
    """Whether a warning raised at ``filename`` comes from torch or scipy (which
    :func:`_import_engine_modules` imports while the inputs load), not from reading the inputs."""
    import importlib.util

    where = Path(filename).resolve()
    for name in ("torch", "scipy"):
        spec = importlib.util.find_spec(name)
        for root in (spec.submodule_search_locations or []) if spec else []:
            if where.is_relative_to(Path(root).resolve()):
                return True
    return False


def _resolve_translator(spec: str, device: str):
    """Loads the translator; the bundled default falls back to 'none' only when it is not installed."""
    from . import translate

    note = None
    if spec == "default" and not translate.default_checkpoint_path().exists():
        note = "bundled NICE-GAN checkpoint not found; ran with intensity normalisation only (translator 'none')"
        warnings.warn(note, stacklevel=2)
        spec = "none"
    return translate.load_translator(spec, device=device), note


def _check_outputs_do_not_clobber_inputs(out_dir: Path, inputs) -> None:
    outs = {(out_dir / f).resolve() for f in OUTPUT_FILES.values()}
    for p in inputs:
        if p and Path(p).resolve() in outs:
            raise InputError(f"input '{p}' would be overwritten by an output; choose another --out folder")


def run_case(coronal, axial, out_dir, *, coronal_labels=None, axial_labels=None,
             params: Params | None = None, progress: ProgressFn | None = None) -> dict:
    """Runs the whole pipeline on one case and writes the output contract into ``out_dir``.

    Returns the content of ``transform.json``. Raises :class:`MMRegError` subclasses with
    one-line messages; on such an error nothing has been written.
    """
    params = params or Params()
    from .device import resolve_device
    from .registration import canonical_method, register

    method = canonical_method(params.method)
    if method != params.method:
        warnings.warn(f"method {params.method!r} is now called {method!r}", DeprecationWarning, stacklevel=2)
    if params.polish not in ("auto", "always", "never"):
        raise InputError(f"unknown polish mode {params.polish!r}; choose auto, always or never")
    if params.label_mode not in labels_mod.MODES:
        raise InputError(f"unknown label mode {params.label_mode!r}; choose from {labels_mod.MODES}")
    out_dir = Path(out_dir)
    _check_outputs_do_not_clobber_inputs(out_dir, [coronal, axial, coronal_labels, axial_labels])
    timings = {}
    t0 = time.perf_counter()
    report(progress, "load", 0, 1)
    # the heavy modules (torch above all, ~1 s) are imported on a thread of their own while the files are
    # read (gzip decompression releases the GIL)
    imports = threading.Thread(target=_import_engine_modules, args=(method,), name="mmreg-imports", daemon=True)
    imports.start()
    header_warnings = []
    caught = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cor, ax, cl, al = _load_inputs(coronal, axial, coronal_labels, axial_labels, params)
    finally:
        imports.join()
        for w in caught:   # shown to the caller as usual (also when loading failed), and kept for report.json
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            if not _from_engine_modules(w.filename):   # (a module the other thread imported is not an input)
                header_warnings.append(str(w.message))
    translator, translator_note = _resolve_translator(params.translator, params.device)
    report(progress, "load", 1, 1)
    timings["load"] = time.perf_counter() - t0

    workers = cpu_share(2)
    registers_synth = method not in REGISTER_ORIGINAL_CET1
    concurrent = translate_alongside(method)
    # independent jobs (translation, resampling, label transfer, writes; scipy, torch and zlib release the
    # GIL), collected in order
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        with torch_threads(1) if concurrent else contextlib.nullcontext():
            if concurrent:
                # (reported once it is done: a "translate" stage left at 0 while "register" runs reads as stuck)
                synth_job = pool.submit(_timed, translator.convert, cor, "ceT1-to-T2")
            else:
                synth, timings["translate"] = _timed(translator.convert, cor, "ceT1-to-T2", progress=progress)
            t = time.perf_counter()
            result = register(synth if registers_synth else cor, ax, method, params=dict(params.method_params),
                              progress=progress, device=resolve_device(params.device), seed=params.seed)
            timings["register"] = time.perf_counter() - t
            if concurrent:
                synth, timings["translate"] = synth_job.result()
                report(progress, "translate", 1, 1)
        polish = method in ("search-ncc", "search-cr") and (
            params.polish == "always" or (params.polish == "auto" and method == "search-ncc" and not result.success))
        if polish:
            t = time.perf_counter()
            result = _polish(result, cor, ax, params.seed, progress)
            timings["polish"] = time.perf_counter() - t
        M = np.asarray(result.moving_to_fixed, dtype=np.float64)

        # resampling and label transfer: independent jobs (scipy releases the GIL), collected in order
        t = time.perf_counter()
        run = pool.submit
        report(progress, "resample", 0, 2)
        cet1_job = run(geometry.moving_onto_fixed, cor, ax, M)
        synth_job = run(geometry.moving_onto_fixed, synth, ax, M)
        cl_job = run(labels_mod.moving_labels_onto_fixed, cl, ax, M, params.label_mode) if cl is not None else None
        al_job = run(labels_mod.fixed_labels_onto_moving, al, cor, M, params.label_mode) if al is not None else None
        cet1_on_ax = cet1_job.result()
        report(progress, "resample", 1, 2)
        synth_on_ax = synth_job.result()
        report(progress, "resample", 2, 2)
        fused = np.stack([np.asarray(ax.array, np.float32), cet1_on_ax.array, synth_on_ax.array], axis=-1)
        timings["resample"] = time.perf_counter() - t

        t = time.perf_counter()
        cl_on_ax = al_on_cor = None
        n_lab = int(cl is not None) + int(al is not None)
        report(progress, "labels", 0, n_lab)
        if cl_job is not None:
            cl_on_ax = cl_job.result()
            report(progress, "labels", 1, n_lab)
        if al_job is not None:
            al_on_cor = al_job.result()
            report(progress, "labels", n_lab, n_lab)
        timings["labels"] = time.perf_counter() - t
        # ------------------------------------------------------------------ write (atomically, per file)
        t = time.perf_counter()
        n_write = 6 + int(cl_on_ax is not None) + int(al_on_cor is not None) + int(cl is not None or al is not None)
        step = 0

        def tick():
            nonlocal step
            step += 1
            report(progress, "write", step, n_write)

        out_dir.mkdir(parents=True, exist_ok=True)
        # the fused 4-D volume first: the largest write; the QC figures go last, on whichever thread is free
        writes = [run(save_volume, ax, out_dir / OUTPUT_FILES["fused"], extra_dims=fused, dtype=np.float32),
                  run(save_volume, synth, out_dir / OUTPUT_FILES["synth_t2"], dtype=np.float32),
                  run(save_volume, cet1_on_ax, out_dir / OUTPUT_FILES["cet1_on_axial"], dtype=np.float32)]
        if cl_on_ax is not None:
            writes.append(run(save_volume, cl_on_ax, out_dir / OUTPUT_FILES["coronal_labels_on_axial"],
                              dtype=np.uint16))
        if al_on_cor is not None:
            writes.append(run(save_volume, al_on_cor, out_dir / OUTPUT_FILES["axial_labels_on_coronal"],
                              dtype=np.uint16))
        transform = _transform_json(M, result, translator)
        figures_job = None
        if params.report_png:  # report.png, qc_before/after.png (never raises: report.py)
            from .report import write_case_figures
            figures_job = run(write_case_figures, out_dir, axial=ax, coronal=cor, cet1_on_axial=cet1_on_ax,
                              result=result, transform=transform, labels_on_axial=cl_on_ax, axial_labels=al,
                              synth_on_axial=synth_on_ax)
        for job in writes:
            job.result()
            tick()
        if cl is not None or al is not None:
            values = set()
            for v in (cl, al):
                if v is not None:
                    values |= set(np.unique(v.array).tolist())
            _write_text(out_dir / OUTPUT_FILES["label_colors"], labels_mod.color_table(values)); tick()
        geometry.write_itk_tfm(M, out_dir / OUTPUT_FILES["transform_tfm"]); tick()
        timings["write"] = time.perf_counter() - t
        qc_info = figures_job.result() if figures_job is not None else {}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    seconds = time.perf_counter() - t0
    transform["seconds"] = float(seconds)
    if translator_note:
        transform["translator_note"] = translator_note
    if result.success is None:
        transform["success_note"] = (result.details or {}).get("success_note", "no calibrated success rule")
    elif ((result.details or {}).get("vote") or {}).get("note"):
        transform["success_note"] = result.details["vote"]["note"]
    elif ((result.details or {}).get("nmi_polish") or {}).get("note"):
        transform["success_note"] = result.details["nmi_polish"]["note"]
    elif ((result.details or {}).get("nmi_polish") or {}).get("agreement_note"):
        transform["success_note"] = result.details["nmi_polish"]["agreement_note"]
    rep = {
        "version": __version__,
        "inputs": {"coronal": str(coronal), "axial": str(axial), "coronal_labels": _s(coronal_labels),
                   "axial_labels": _s(axial_labels)},
        "params": params.to_dict(),
        "translator": {"name": translator.name, "info": getattr(translator, "info", {}), "note": translator_note},
        "registration": {"method": result.method, "metric": float(result.metric),
                         "success": None if result.success is None else bool(result.success),
                         "subset_index": result.subset_index, "seconds": float(result.seconds),
                         "details": result.details},
        "geometry": {"coronal": _geom(cor), "axial": _geom(ax)},
        "input_warnings": header_warnings,
        "fused_channels": list(FUSED_CHANNELS),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        # true: the translator ran on a second thread during the registration (timings overlap)
        "translate_concurrent_with_register": concurrent,
        "total_seconds": round(seconds, 3),
        "platform": {"python": platform.python_version(), "machine": platform.machine()},
    }
    if params.report_png:  # report.html (the figures are done); never raises (report.py)
        from .report import write_case_html
        rep.update(qc_info)
        rep.update(write_case_html(out_dir, transform, rep))
    tick()
    _write_text(out_dir / OUTPUT_FILES["report_json"], json.dumps(rep, indent=2, default=_json_default))
    # transform.json last: its presence means every other output is complete.
    _write_text(out_dir / OUTPUT_FILES["transform_json"], json.dumps(transform, indent=2)); tick()
    return transform


def _transform_json(M: np.ndarray, result, translator) -> dict:
    """transform.json's content ("seconds" is filled in once the case is done)."""
    return {
        "moving_to_fixed_ras": M.tolist(),
        "method": result.method,
        "metric": float(result.metric),
        "subset_index": result.subset_index,
        "seconds": None,
        "success": None if result.success is None else bool(result.success),
        "confidence": _confidence_score(result),
        "confidence_detail": _confidence(result),
        "translator": translator.name,
        # Subsets pruned or not evaluated carry None (JSON null).
        "subset_metrics": None if result.subset_metrics is None else
        [None if x is None or not np.isfinite(x) else float(x) for x in result.subset_metrics],
    }


#: the methods that register the original ceT1 to the T2 (the others register the synthetic T2)
REGISTER_ORIGINAL_CET1 = ("mi", "search-cr")


def translate_alongside(method: str) -> bool:
    """Whether the translator runs on a thread of its own while ``method`` registers. search-cr and mi
    register the original ceT1 to the T2 (any contrast), so the synthetic T2 is an output, not an input of
    theirs; search-ncc and paper register the synthetic T2 itself, so it comes first. Alongside only with
    three or more cores (:func:`~.threads.cpu_share`): on two, search-cr's two directions already keep both
    busy, and sharing them with the translator made its registration stage 1.3x slower for the same wall
    time (benchmarks/results/e2e_v5/README.md); the translator then runs first, on both cores."""
    return method in REGISTER_ORIGINAL_CET1 and cpu_share(3) >= 3


def _timed(fn, *args, **kwargs):
    """(fn(*args, **kwargs), seconds it took)."""
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def _polish(result, cor: Volume, ax: Volume, seed: int, progress):
    """MI refinement of the NCC result on the original ceT1 (see registration/mi.py); returns a new result."""
    from dataclasses import replace

    from .registration.mi import POLISH_SUCCESS_MI, mi_polish

    report(progress, "polish", 0, 1)
    r = mi_polish(cor, ax, {"ncc": np.asarray(result.moving_to_fixed), "header": np.eye(4)}, seed=seed)
    report(progress, "polish", 1, 1)
    details = dict(result.details)
    details["ncc_result"] = {"metric": float(result.metric), "success": bool(result.success),
                             "moving_to_fixed_ras": np.asarray(result.moving_to_fixed).tolist()}
    details["polish"] = {k: v for k, v in r.items() if k != "moving_to_fixed"}
    details["polish"]["success_threshold_mi"] = POLISH_SUCCESS_MI
    if r["moving_to_fixed"] is None:
        return replace(result, details=details)
    return replace(result, moving_to_fixed=r["moving_to_fixed"], method=f"{result.method}+mi-polish", metric=float(r["metric"]),
                   success=bool(r["metric"] <= POLISH_SUCCESS_MI), seconds=result.seconds + r["seconds"],
                   details=details)


def _confidence_score(result):
    """One number for sorting and review (higher = more confident), or None without a calibrated rule:
    for search-cr ``1 - disagreement / (2 * threshold)`` clipped to [0, 1], so 0.5 is the calibrated
    threshold (flagged below). A monotone rescaling of the disagreement, not a probability; an agreement
    that the second metric rejected (``details["vote"]["confirmed"] is False``), or that the NMI polish
    moved by more than the threshold (``details["nmi_polish"]``), is capped at 0.45, below the threshold;
    a result that passed on the re-agreement after polishing both directions is scored on that
    post-polish distance (its vote has nothing to confirm: ``confirmed`` is None)."""
    cons = (result.details or {}).get("consistency")
    if result.method.startswith("search-cr") and cons and np.isfinite(cons["mm"]):
        mm = float(cons["mm"])
        polish = (result.details or {}).get("nmi_polish") or {}
        if result.success and "directions_after_polish_mm" in polish:
            mm = float(polish["directions_after_polish_mm"])     # the agreement after polishing both
        score = float(np.clip(1.0 - mm / (2.0 * float(cons["threshold_mm"])), 0.0, 1.0))
        vote = (result.details or {}).get("vote") or {}
        if vote.get("confirmed") is False:                       # the second metric rejected the agreement
            score = min(score, 0.45)
        if polish.get("note"):                                   # the polish left the agreed pose
            score = min(score, 0.45)
        return round(score, 4)
    return None


def _confidence(result) -> dict:
    """What the success flag rests on, for transform.json: the rule, its measured inputs and a note."""
    d = result.details or {}
    cons = d.get("consistency")
    if result.method.startswith("search-cr") and cons:
        vote = d.get("vote")
        out = {"rule": "forward/backward agreement",
               "consistency_mm": round(float(cons["mm"]), 3), "threshold_mm": float(cons["threshold_mm"]),
               "note": "forward (coronal->axial) and backward (axial->coronal) registrations, each with its own "
                       "global search, agree to this mean distance over the overlap, and no estimate of the run "
                       "farther than the threshold from the result scores a higher NMI; calibration: "
                       "docs/REGISTRATION.md"}
        if vote:
            out["second_metric"] = "normalised mutual information"
            # None: the directions disagreed, so there was no agreement for the second metric to confirm
            out["second_metric_confirmed"] = vote.get("confirmed")
            out["result_chosen"] = vote.get("chosen")
        polish = d.get("nmi_polish")
        if polish:
            out["nmi_polish"] = {"applied": bool(polish.get("applied")),
                                 "moved_mm": round(float(polish.get("moved_mm", 0.0)), 3),
                                 "nmi_before": round(float(polish["nmi_before"]), 5),
                                 "nmi_after": round(float(polish["nmi_after"]), 5)}
            if "directions_after_polish_mm" in polish:
                out["nmi_polish"]["directions_after_polish_mm"] = round(float(polish["directions_after_polish_mm"]), 3)
                out["nmi_polish"]["chosen"] = polish.get("chosen")
        return out
    if result.success is None:
        return {"rule": None, "note": d.get("success_note", "no calibrated success rule for this result")}
    return {"rule": "metric threshold", "metric": float(result.metric),
            "note": "a threshold on the method's own metric (docs/REGISTRATION.md says how it was set)"}


def _s(p):
    return None if p is None else str(p)


def _geom(v: Volume) -> dict:
    return {"shape": list(v.shape), "spacing_mm": [round(float(s), 4) for s in v.spacing], "plane": plane(v),
            "obliquity_deg": round(obliquity_deg(v), 2)}


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text), suffix=Path(path).suffix)


def read_transform(out_dir) -> np.ndarray:
    """The moving->fixed RAS matrix of a finished output folder."""
    data = json.loads((Path(out_dir) / OUTPUT_FILES["transform_json"]).read_text())
    return np.asarray(data["moving_to_fixed_ras"], dtype=np.float64)
