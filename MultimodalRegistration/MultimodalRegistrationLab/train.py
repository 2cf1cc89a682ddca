"""NICE-GAN training (``mmreg train``): paired or unpaired, resumable, deterministic with a seed.

One iteration follows NICE-GAN's ``train()`` loop: a discriminator step (LSGAN losses of the three
scales and of the CAM logit on real and on translated images; the encoders are part of the
discriminators and are trained here) then a generator step (adversarial + CAM adversarial,
cycle L1, reconstruction L1). Deviation for the paired setting (on by default when the data are
paired, ``--paired-weight``): an extra L1 loss between the translation and its paired target, and
the encoders also receive that gradient (``--encoder-in-g``); NICE-GAN proper trains the encoders
only with the discriminator loss (``--paired-weight 0 --no-encoder-in-g`` restores it).

Every ``--log-every`` iterations the losses go to ``log.txt`` and ``losses.jsonl`` (and the mean
squared error on a few held-out slices, converted vs. unconverted, when a validation set exists),
every ``--sample-every`` a sample grid PNG, every ``--save-every-s`` seconds the full state
(``state.pt``: model incl. discriminators, both optimisers, iteration, accumulated wall time; read
back with ``torch.load(weights_only=True)``) and the inference checkpoint
``<out>/nicegan_cet1_t2.safetensors`` + sidecar. Rerunning the same command resumes.

Determinism: the weights are initialised from ``torch.manual_seed(seed)``, and the slices of
iteration ``i`` are drawn from ``numpy.random.default_rng([seed, i])`` (stateless), so a resumed run
draws the same samples as an uninterrupted one.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from MultimodalRegistrationLib.errors import CheckpointError, InputError
from MultimodalRegistrationLib.progress import ProgressFn, report
from MultimodalRegistrationLib.threads import set_threads
from MultimodalRegistrationLib.translate import DEFAULT_CHECKPOINT_NAME, hardware_description, save_checkpoint

STATE_FILE = "state.pt"


def _mse(x, y):
    return ((x - y) ** 2).mean()


def _adv(logits, target: float):
    return sum(((l - target) ** 2).mean() for l in logits)


class Trainer:
    def __init__(self, A: np.ndarray, B: np.ndarray, out_dir: os.PathLike, cfg=None, *, lr: float = 1e-4,
                 batch_size: int = 1, paired: bool = True, paired_weight: float = 10.0, encoder_in_g: bool = True,
                 adv_weight: float = 1.0, cycle_weight: float = 10.0, recon_weight: float = 10.0,
                 seed: int = 0, device: str = "cpu", val: tuple | None = None, data_desc: dict | None = None,
                 command: str | None = None, normalisation: dict | None = None,
                 A_unpaired: np.ndarray | None = None, unpaired_prob: float = 0.0):
        import torch

        from MultimodalRegistrationLib.nicegan import NiceGan, NiceGanConfig

        if A.ndim != 3 or A.shape != B.shape and paired:
            raise InputError(f"training slices must be (N, S, S) with A and B alike; got {A.shape} and {B.shape}")
        self.cfg = cfg or NiceGanConfig(img_size=int(A.shape[-1]))
        if A.shape[-1] != self.cfg.img_size or A.shape[-2] != self.cfg.img_size:
            raise InputError(f"slices are {A.shape[-2:]} px but the network is configured for {self.cfg.img_size} px")
        self.A, self.B = A, B
        self.A_unpaired = A_unpaired if A_unpaired is not None and len(A_unpaired) else None
        self.normalisation = normalisation
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.hp = dict(lr=lr, batch_size=batch_size, paired=paired, paired_weight=paired_weight if paired else 0.0,
                       encoder_in_g=encoder_in_g, adv_weight=adv_weight, cycle_weight=cycle_weight,
                       recon_weight=recon_weight, seed=seed, betas=[0.5, 0.999],
                       unpaired_prob=float(unpaired_prob) if self.A_unpaired is not None else 0.0)
        self.device = device
        self.val = val
        self.data_desc = data_desc or {}
        self.command = command
        torch.manual_seed(seed)
        self.model = NiceGan(self.cfg).to(device)
        g_params = self.model.generator_parameters()
        if encoder_in_g and self.hp["paired_weight"] > 0:
            g_params = g_params + list(self.model.encA.parameters()) + list(self.model.encB.parameters())
        self.optG = torch.optim.Adam(g_params, lr=lr, betas=(0.5, 0.999))
        self.optD = torch.optim.Adam(self.model.discriminator_parameters(), lr=lr, betas=(0.5, 0.999))
        self.iteration = 0
        self.wall = 0.0
        self.history: list[dict] = []
        self.commands: list[str] = []

    # ------------------------------------------------------------------ state
    def save_state(self) -> Path:
        import torch

        from MultimodalRegistrationLib.volume import atomic_write

        state = {"model": self.model.state_dict(), "optG": self.optG.state_dict(), "optD": self.optD.state_dict(),
                 "iteration": torch.tensor(self.iteration), "wall": torch.tensor(self.wall),
                 "meta": json.dumps({"cfg": self.cfg.to_dict(), "hp": self.hp, "commands": self.commands})}
        return atomic_write(self.out / STATE_FILE, lambda tmp: torch.save(state, tmp))

    def load_state(self) -> bool:
        import torch

        p = self.out / STATE_FILE
        if not p.exists():
            return False
        try:
            st = torch.load(p, map_location=self.device, weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"training state {p} is unreadable ({type(exc).__name__}: {exc})") from None
        meta = json.loads(st["meta"])
        if meta["cfg"] != self.cfg.to_dict():
            raise CheckpointError(f"training state {p} has another architecture {meta['cfg']}; use another --out")
        self.model.load_state_dict(st["model"])
        self.optG.load_state_dict(st["optG"])
        self.optD.load_state_dict(st["optD"])
        self.iteration = int(st["iteration"])
        self.wall = float(st["wall"])
        self.commands = list(meta.get("commands", []))
        return True

    def init_from(self, checkpoint: os.PathLike) -> dict:
        """Starts from the inference weights (encoders, decoders) of a checkpoint; the discriminator
        heads keep their fresh initialisation. Returns the checkpoint's sidecar."""
        from MultimodalRegistrationLib.translate import load_checkpoint

        model, meta = load_checkpoint(checkpoint, "cpu")
        if meta["config"] != self.cfg.to_dict():
            raise CheckpointError(f"--init-from {checkpoint} has architecture {meta['config']}, "
                                  f"not {self.cfg.to_dict()}")
        missing, unexpected = self.model.load_state_dict(model.state_dict(), strict=False)
        if unexpected or any(not k.startswith(("headsA.", "headsB.")) for k in missing):
            raise CheckpointError(f"--init-from {checkpoint}: weights do not fit this model")
        return meta

    def export(self, path: os.PathLike | None = None) -> Path:
        path = Path(path) if path else self.out / DEFAULT_CHECKPOINT_NAME
        training = {
            "iterations": self.iteration,
            "wall_time_s": round(self.wall, 1),
            "hardware": hardware_description(),
            "command": self.command,
            "commands_all_sessions": self.commands,
            "hyperparameters": self.hp,
            "data": self.data_desc,
            "last_losses": self.history[-1] if self.history else None,
        }
        return save_checkpoint(self.model, path, training, self.normalisation)

    # ------------------------------------------------------------------ data
    def batch(self, it: int):
        import torch

        rng = np.random.default_rng([self.hp["seed"], it])
        n = len(self.A)
        ia = rng.integers(0, n, self.hp["batch_size"])
        ib = ia if self.hp["paired"] else rng.integers(0, len(self.B), self.hp["batch_size"])
        srcA = self.A
        paired = self.hp["paired"]
        if self.hp.get("unpaired_prob", 0.0) > 0 and rng.random() < self.hp["unpaired_prob"]:
            # a real ceT1 without a T2 (e.g. with skull): adversarial, cycle and reconstruction losses only
            srcA = self.A_unpaired
            ia = rng.integers(0, len(srcA), self.hp["batch_size"])
            paired = False
        a = torch.from_numpy(srcA[ia] * 2 - 1)[:, None].to(self.device)
        b = torch.from_numpy(self.B[ib] * 2 - 1)[:, None].to(self.device)
        self._paired_now = paired
        return a, b

    # ------------------------------------------------------------------ one iteration
    def step(self, it: int) -> dict:
        import torch

        m = self.model
        hp = self.hp
        real_A, real_B = self.batch(it)
        m.train()
        # ---- discriminator step (encoders belong to the discriminators)
        for p in m.discriminator_parameters():
            p.requires_grad_(True)
        self.optD.zero_grad(set_to_none=True)
        rA = m.discriminate("A", real_A)
        rB = m.discriminate("B", real_B)
        with torch.no_grad():
            fake_A2B = m.decB(rA[5])
            fake_B2A = m.decA(rB[5])
        fA = m.discriminate("A", fake_B2A.detach())
        fB = m.discriminate("B", fake_A2B.detach())
        d_loss = hp["adv_weight"] * (_adv(rA[:4], 1.0) + _adv(fA[:4], 0.0) + _adv(rB[:4], 1.0) + _adv(fB[:4], 0.0))
        d_loss.backward()
        self.optD.step()
        # ---- generator step (decoders; encoders too in the paired deviation)
        enc_trainable = self.optG.param_groups[0]["params"]
        enc_ids = {id(p) for p in enc_trainable}
        for p in m.discriminator_parameters():
            p.requires_grad_(id(p) in enc_ids)
        self.optG.zero_grad(set_to_none=True)
        zA, _, _ = m.encA(real_A)
        zB, _, _ = m.encB(real_B)
        fake_A2B = m.decB(zA)
        fake_B2A = m.decA(zB)
        fake_A2A = m.decA(zA)
        fake_B2B = m.decB(zB)
        # The discriminators judging the fakes (and encoding them for the cycle) are constants here:
        # the generator step must not move a discriminator's encoder to fool that discriminator.
        enc_params = list(m.encA.parameters()) + list(m.encB.parameters())
        for p in enc_params:
            p.requires_grad_(False)
        gB = m.discriminate("B", fake_A2B)   # D_B judges A->B and its z feeds the cycle
        gA = m.discriminate("A", fake_B2A)
        for p in enc_params:
            p.requires_grad_(id(p) in enc_ids)
        fake_A2B2A = m.decA(gB[5])
        fake_B2A2B = m.decB(gA[5])
        g_adv = _adv(gA[:4], 1.0) + _adv(gB[:4], 1.0)
        g_cyc = (fake_A2B2A - real_A).abs().mean() + (fake_B2A2B - real_B).abs().mean()
        g_rec = (fake_A2A - real_A).abs().mean() + (fake_B2B - real_B).abs().mean()
        g_pair = (fake_A2B - real_B).abs().mean() + (fake_B2A - real_A).abs().mean()
        w_pair = hp["paired_weight"] if getattr(self, "_paired_now", hp["paired"]) else 0.0
        g_loss = (hp["adv_weight"] * g_adv + hp["cycle_weight"] * g_cyc + hp["recon_weight"] * g_rec
                  + w_pair * g_pair)
        g_loss.backward()
        self.optG.step()
        for p in m.discriminator_parameters():
            p.requires_grad_(True)
        return {"d": d_loss.item(), "g": g_loss.item(), "g_adv": g_adv.item(), "cycle": g_cyc.item(),
                "recon": g_rec.item(), "paired_l1": g_pair.item()}

    # ------------------------------------------------------------------ validation / samples
    def validate(self) -> dict:
        """MSE (0..255 scale) on the held-out slices: converted vs. unconverted, both directions."""
        import torch

        if self.val is None:
            return {}
        va, vb = self.val
        self.model.eval()
        res = {}
        with torch.inference_mode():
            a = torch.from_numpy(va * 2 - 1)[:, None].to(self.device)
            b = torch.from_numpy(vb * 2 - 1)[:, None].to(self.device)
            ab = ((self.model.translate(a, "A", "B").clamp(-1, 1) + 1) / 2)[:, 0].cpu().numpy()
            ba = ((self.model.translate(b, "B", "A").clamp(-1, 1) + 1) / 2)[:, 0].cpu().numpy()
        res["val_mse_A2B"] = float(np.mean(((ab - vb) * 255) ** 2))
        res["val_mse_A_vs_B"] = float(np.mean(((va - vb) * 255) ** 2))
        res["val_mse_B2A"] = float(np.mean(((ba - va) * 255) ** 2))
        self.model.train()
        return res

    def sample_grid(self, path: os.PathLike, n: int = 4) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import torch

        src = self.val if self.val is not None else (self.A, self.B)
        idx = np.linspace(0, len(src[0]) - 1, n).astype(int)
        a = torch.from_numpy(src[0][idx] * 2 - 1)[:, None].to(self.device)
        b = torch.from_numpy(src[1][idx] * 2 - 1)[:, None].to(self.device)
        self.model.eval()
        with torch.inference_mode():
            ab = ((self.model.translate(a, "A", "B").clamp(-1, 1) + 1) / 2)[:, 0].cpu().numpy()
            ba = ((self.model.translate(b, "B", "A").clamp(-1, 1) + 1) / 2)[:, 0].cpu().numpy()
        self.model.train()
        cols = [("ceT1", src[0][idx]), ("ceT1->T2", ab), ("T2", src[1][idx]), ("T2->ceT1", ba)]
        fig, axes = plt.subplots(n, 4, figsize=(8, 2 * n))
        for r in range(n):
            for c, (title, imgs) in enumerate(cols):
                ax = axes[r, c]
                ax.imshow(imgs[r], cmap="gray", vmin=0, vmax=1)
                ax.axis("off")
                if r == 0:
                    ax.set_title(title, fontsize=9)
        fig.suptitle(f"iteration {self.iteration}", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return Path(path)

    # ------------------------------------------------------------------ loop
    def run(self, iterations: int, *, log_every: int = 100, sample_every: int = 1000, save_every_s: float = 300.0,
            export_every: int = 0, progress: ProgressFn | None = None, log=print,
            max_seconds: float | None = None) -> dict:
        """Trains until ``self.iteration == iterations`` (or ``max_seconds`` of this call have passed:
        the state and checkpoint are then saved and the run can be resumed); returns the last losses."""
        t_call = time.monotonic()
        last_save = time.monotonic()
        t_prev = time.monotonic()
        acc: dict = {}
        losses = {}
        loss_file = self.out / "losses.jsonl"
        while self.iteration < iterations:
            losses = self.step(self.iteration)
            self.iteration += 1
            now = time.monotonic()
            self.wall += now - t_prev
            t_prev = now
            for k, v in losses.items():
                acc[k] = acc.get(k, 0.0) + v
            if self.iteration % log_every == 0 or self.iteration == iterations:
                nacc = log_every if self.iteration % log_every == 0 else (self.iteration % log_every)
                rec = {"iteration": self.iteration, "wall_s": round(self.wall, 1),
                       **{k: round(v / nacc, 5) for k, v in acc.items()}}
                rec.update({k: round(v, 2) for k, v in self.validate().items()})
                acc = {}
                self.history.append(rec)
                with open(loss_file, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                log(json.dumps(rec))
            if sample_every and self.iteration % sample_every == 0:
                self.sample_grid(self.out / f"samples_{self.iteration:06d}.png")
            if export_every and self.iteration % export_every == 0:
                self.export(self.out / f"iter_{self.iteration:06d}_{DEFAULT_CHECKPOINT_NAME}")
            out_of_time = max_seconds is not None and now - t_call >= max_seconds
            if now - last_save > save_every_s or self.iteration == iterations or out_of_time:
                self.save_state()
                self.export()
                last_save = time.monotonic()
            report(progress, "train", self.iteration, iterations)
            if out_of_time:
                log(f"stopping at iteration {self.iteration}: --max-seconds {max_seconds:g} reached")
                break
        return losses


# ----------------------------------------------------------------------------- CLI: mmreg train

def load_training_sets(paths) -> tuple:
    """One or more ``synth`` training sets, concatenated: (A, B, sources, recipe). With several files
    the recipe is the list of their recipes, in order. Missing files and different slice sizes stop
    with an InputError before anything is trained."""
    from .synth import load_dataset

    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise InputError(f"training data not found: {', '.join(missing)} "
                         "(build it with python -m MultimodalRegistrationLab.synth, or --build-data for one file)")
    parts = [load_dataset(p) for p in paths]
    sizes = {p.name: tuple(part[0].shape[1:]) for p, part in zip(paths, parts)}
    if len(set(sizes.values())) > 1:
        raise InputError(f"training sets have different slice sizes: {sizes}")
    if len(parts) == 1:
        return parts[0]
    return (np.concatenate([x[0] for x in parts]), np.concatenate([x[1] for x in parts]),
            [s for x in parts for s in x[2]], [x[3] for x in parts])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, nargs="+",
                        help="training set .npz (made by synth.build_dataset); several files are concatenated")
    parser.add_argument("--build-data", action="store_true",
                        help="build --data first if it does not exist (a single file only)")
    parser.add_argument("--val-data", default=None, help="optional held-out .npz for the periodic validation MSE")
    parser.add_argument("--out", required=True, help="run folder (state, logs, samples, exported checkpoint)")
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--ch", type=int, default=24, help="ngf = ndf (paper: 64)")
    parser.add_argument("--n-res", type=int, default=3, help="AdaLIN residual blocks (paper: 6)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--unpaired", action="store_true", help="draw ceT1 and T2 slices independently")
    parser.add_argument("--paired-weight", type=float, default=10.0, help="paired L1 weight (0 = NICE-GAN proper)")
    parser.add_argument("--no-encoder-in-g", action="store_true", help="encoders trained by D loss only (paper)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--sample-every", type=int, default=1000)
    parser.add_argument("--save-every-s", type=float, default=300.0)
    parser.add_argument("--export-every", type=int, default=0, help="also keep a checkpoint every N iterations")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--fresh", action="store_true", help="ignore an existing state in --out")
    parser.add_argument("--init-from", default=None,
                        help="start a new run from this checkpoint's encoders/decoders ('default' = the bundled one); "
                             "ignored when --out holds a state to resume")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop (saving state and checkpoint, resumable) after this many seconds of this call")
    parser.add_argument("--unpaired-prob", type=float, default=0.0,
                        help="share of iterations whose ceT1 is an unpaired real slice (A_unpaired in --data)")


def run_cli(args) -> int:
    import torch

    from MultimodalRegistrationLib.nicegan import NiceGanConfig
    from .synth import build_dataset, load_dataset, load_unpaired
    from MultimodalRegistrationLib.device import resolve_device
    from MultimodalRegistrationLib.translate import NORMALISATION, default_checkpoint_path

    set_threads(max(1, args.threads))
    paths = [Path(d) for d in args.data]
    if args.build_data and len(paths) == 1 and not paths[0].exists():
        build_dataset(paths[0])
    A, B, sources, recipe = load_training_sets(paths)
    norms = [r.get("normalisation", "percentile") for r in (recipe if isinstance(recipe, list) else [recipe])]
    if any(json.dumps(n, sort_keys=True) != json.dumps(norms[0], sort_keys=True) for n in norms):
        raise InputError("training sets were built with different intensity normalisations")
    normalisation = NORMALISATION if norms[0] == "percentile" else norms[0]
    unp = [u for u in (load_unpaired(p) for p in paths) if u is not None]
    A_unpaired = np.concatenate(unp) if unp else None
    if args.unpaired_prob > 0 and A_unpaired is None:
        raise InputError("--unpaired-prob needs a training set with unpaired ceT1 slices (synth --unpaired-cet1)")
    val = None
    if args.val_data:
        va, vb, _, vrec = load_dataset(args.val_data)
        if json.dumps(vrec.get("normalisation", "percentile"), sort_keys=True) != json.dumps(norms[0], sort_keys=True):
            raise InputError("--val-data was built with another intensity normalisation than --data")
        val = (va, vb)
    paired = not args.unpaired
    uniq = sorted(set(s.split(":")[0] for s in sources))
    data_desc = {"file": " + ".join(d.name for d in paths), "pairs": int(len(A)), "sources": {u: sum(s.startswith(u) for s in sources)
                                                                     for u in uniq}, "recipe": recipe,
                 "validation": Path(args.val_data).name if args.val_data else None}
    prog = "mmreg" if Path(sys.argv[0]).name.startswith("mmreg") else "python -m MultimodalRegistrationLab.train"
    cmd = prog + " " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    cfg = NiceGanConfig(ch=args.ch, n_res=args.n_res, img_size=int(A.shape[-1]))
    tr = Trainer(A, B, args.out, cfg, lr=args.lr, batch_size=args.batch_size, paired=paired,
                 paired_weight=args.paired_weight, encoder_in_g=not args.no_encoder_in_g, seed=args.seed,
                 device=resolve_device(args.device), val=val, data_desc=data_desc, command=cmd,
                 normalisation=normalisation, A_unpaired=A_unpaired, unpaired_prob=args.unpaired_prob)
    if A_unpaired is not None:
        data_desc["unpaired_cet1_slices"] = int(len(A_unpaired))
    log_path = Path(args.out) / "log.txt"

    def log(msg: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
        print(line, flush=True)
        with open(log_path, "a") as f:
            f.write(line + "\n")

    if not args.fresh and tr.load_state():
        log(f"resumed from iteration {tr.iteration} ({tr.wall:.0f}s of training so far)")
    elif args.init_from:
        src = default_checkpoint_path() if args.init_from == "default" else Path(args.init_from)
        meta = tr.init_from(src)
        tr.hp["init_from"] = {"file": src.name, "sha256": meta.get("sha256"),
                              "iterations": (meta.get("training") or {}).get("iterations"),
                              "normalisation": (meta.get("normalisation") or {}).get("method")}
        log(f"initialised encoders/decoders from {src} ({tr.hp['init_from']})")
    tr.commands.append(cmd)
    log(f"training {cfg.to_dict()} {tr.hp} on {len(A)} pairs, device {tr.device}, "
        f"{torch.get_num_threads()} threads, to iteration {args.iterations}")
    tr.run(args.iterations, log_every=args.log_every, sample_every=args.sample_every,
           save_every_s=args.save_every_s, export_every=args.export_every, log=log, max_seconds=args.max_seconds)
    log(f"done: iteration {tr.iteration}, wall {tr.wall:.0f}s; checkpoint {Path(args.out) / DEFAULT_CHECKPOINT_NAME}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m MultimodalRegistrationLab.train", description=__doc__.split("\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run_cli(args)
    except (InputError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
