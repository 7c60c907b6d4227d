"""The model facade: vocabulary, network, self-describing checkpoints (no AnnData here)."""

from __future__ import annotations

import difflib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import grn
from .config import RunConfig
from .data import Condition, PerturbationData, Split, tokens_of
from .errors import RunError, UnknownPerturbationError
from .nn import PAD, UNKNOWN, ConditionEncoder, CondTensors, DeparturesNet, GRNEncoder

CHECKPOINT_FORMAT = 3  # 2: expression bridge given the on/off endpoint; 3: on/off given switches
# what every checkpoint of this format holds; a resume also needs optimizer and torch_rng
CHECKPOINT_KEYS = ("config", "vocab", "split", "model", "epoch", "step")


def library_version() -> str:
    from . import __version__

    return __version__


@dataclass(frozen=True)
class Vocabulary:
    """What the network can name: genes (columns), training tokens, cell types."""

    genes: tuple[str, ...]
    tokens: tuple[str, ...]  # perturbation parts seen in training; id = position + 2
    cell_types: tuple[str, ...]

    def token_id(self, part: str) -> int:
        try:
            return self.tokens.index(part) + 2
        except ValueError:
            return UNKNOWN

    def gene_id(self, part: str) -> int:
        try:
            return self.genes.index(part)
        except ValueError:
            return -1

    def unknown_parts(self, perturbation: str) -> list[str]:
        """Parts with neither a learned embedding nor graph features: the 'unknown' fallback."""
        return [
            p
            for p in tokens_of(perturbation)
            if self.token_id(p) == UNKNOWN and self.gene_id(p) < 0
        ]

    def to_dict(self) -> dict:
        return {
            "genes": list(self.genes),
            "tokens": list(self.tokens),
            "cell_types": list(self.cell_types),
        }


def build_vocabulary(data: PerturbationData) -> Vocabulary:
    tokens = sorted({t for c in data.train_conditions() for t in tokens_of(c.perturbation)})
    return Vocabulary(tuple(data.genes), tuple(tokens), tuple(data.cell_types))


def encode(vocab: Vocabulary, rows: list[tuple[str, str, float]]) -> CondTensors:
    """Conditioning tensors for ``(perturbation, cell_type, dose)`` rows.

    Raises `UnknownPerturbationError` for a cell type the model was not built with.
    """
    k = max(1, max(len(tokens_of(p)) for p, _, _ in rows))
    tok = np.full((len(rows), k), PAD, dtype=np.int64)
    gen = np.full((len(rows), k), -1, dtype=np.int64)
    ct = np.zeros(len(rows), dtype=np.int64)
    for r, (pert, cell_type, _) in enumerate(rows):
        if cell_type not in vocab.cell_types:
            raise UnknownPerturbationError(
                f"Unknown cell type '{cell_type}'. Known: {', '.join(vocab.cell_types)}."
            )
        ct[r] = vocab.cell_types.index(cell_type)
        for j, part in enumerate(tokens_of(pert)):
            tok[r, j], gen[r, j] = vocab.token_id(part), vocab.gene_id(part)
    dose = torch.tensor([d for _, _, d in rows], dtype=torch.float32)
    return CondTensors(torch.from_numpy(tok), torch.from_numpy(gen), torch.from_numpy(ct), dose)


def condition_rows(conditions: list[Condition]) -> list[tuple[str, str, float]]:
    return [(c.perturbation, c.cell_type, c.dose) for c in conditions]


def build_net(
    vocab: Vocabulary, config: RunConfig, buffers: dict[str, torch.Tensor], split: Split
) -> DeparturesNet:
    m = config.model
    unseen = torch.tensor([ct in split.unseen_cell_types for ct in vocab.cell_types])
    encoder_grn = GRNEncoder(
        buffers["gene_features"], buffers["edge_index"], buffers["edge_weight"], m.cond_dim
    )
    encoder = ConditionEncoder(
        len(vocab.tokens) + 2,
        buffers["ct_context"],
        encoder_grn,
        m.cond_dim,
        m.token_dropout,
        ct_dropout=m.ct_dropout,
        ct_unseen=unseen,
    )
    return DeparturesNet(
        len(vocab.genes),
        encoder,
        hidden=m.hidden,
        cond_dim=m.cond_dim,
        n_layers=m.n_layers,
        discrete=config.bridge.discrete,
    )


def data_buffers(data: PerturbationData, config: RunConfig, rng: np.random.Generator) -> dict:
    """Graph, gene features and per-cell-type control means, from the control cells."""
    ctrl = np.flatnonzero(data.perturbation == data.control)
    if len(ctrl) > config.model.grn_max_cells:
        ctrl = rng.choice(ctrl, config.model.grn_max_cells, replace=False)
    x_ctrl = data.x[ctrl]
    edge_index, edge_weight = grn.coexpression_edges(x_ctrl, threshold=config.model.grn_threshold)
    ct_context = np.stack([data.x.mean(data.control_indices(ct)) for ct in data.cell_types])
    return {
        "gene_features": torch.from_numpy(grn.gene_features(x_ctrl)),
        "edge_index": torch.from_numpy(edge_index),
        "edge_weight": torch.from_numpy(edge_weight),
        "ct_context": torch.from_numpy(ct_context.astype(np.float32)),
    }


class Departures:
    """A configured network with its vocabulary and split: build, check, save, load."""

    def __init__(self, config: RunConfig, vocab: Vocabulary, split: Split, net: DeparturesNet):
        self.config, self.vocab, self.split, self.net = config, vocab, split, net

    @classmethod
    def build(cls, data: PerturbationData, config: RunConfig) -> Departures:
        vocab = build_vocabulary(data)
        buffers = data_buffers(data, config, np.random.default_rng(config.seed))
        return cls(config, vocab, data.split, build_net(vocab, config, buffers, data.split))

    def check_perturbation(self, perturbation: str) -> list[str]:
        """Return the parts that fall back to 'unknown'; raise if all of them do and none is
        known from the data or the split."""
        unknown = self.vocab.unknown_parts(perturbation)
        known_labels = set(self.split.train) | set(self.split.holdout)
        if (
            unknown
            and len(unknown) == len(tokens_of(perturbation))
            and (perturbation not in known_labels)
        ):
            close = difflib.get_close_matches(perturbation, sorted(known_labels), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UnknownPerturbationError(
                f"Unknown perturbation '{perturbation}': not in the data and none of its genes "
                f"is measured or seen in training.{hint}"
            )
        return unknown

    # -- checkpoints -----------------------------------------------------------------------
    def state(self, **extra) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "library_version": library_version(),
            "config": self.config.to_json(),
            "vocab": json.dumps(self.vocab.to_dict()),
            "split": json.dumps(self.split.to_dict()),
            "model": self.net.state_dict(),
            **extra,
        }

    @classmethod
    def from_state(cls, state: dict) -> Departures:
        config = RunConfig.from_dict(json.loads(state["config"]))
        v = json.loads(state["vocab"])
        vocab = Vocabulary(tuple(v["genes"]), tuple(v["tokens"]), tuple(v["cell_types"]))
        split = Split.from_dict(json.loads(state["split"]))
        # float32 whatever they were stored in (the shipped demo run keeps float16)
        weights = {k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()}
        buffers = {
            name: weights[f"encoder.{prefix}{name}"]
            for prefix, name in (
                ("grn.", "gene_features"),
                ("grn.", "edge_index"),
                ("grn.", "edge_weight"),
                ("", "ct_context"),
            )
        }
        net = build_net(vocab, config, buffers, split)
        net.load_state_dict(weights)
        return cls(config, vocab, split, net)


def atomic_write_bytes(path: Path, write) -> None:
    """Write via a temporary file in the same folder and ``os.replace``: all or nothing.

    The file is flushed and fsynced before the rename and the folder after it, so a crash or
    power loss leaves either the previous file or the new one, never a partial one. A process
    killed mid-write leaves its temporary file behind: readers ignore it and the next
    training of the folder removes it (`remove_partial_writes`).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_partial_writes(folder: Path, names) -> list[Path]:
    """Delete the temporary files that `atomic_write_bytes` of ``names`` left in ``folder``
    when its process was killed mid-write; return them.

    Only the one process writing ``folder`` may call this (another writer's file in flight
    would be deleted under it).
    """
    folder = Path(folder)
    stale = [p for name in names for p in folder.glob(f".{name}.*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda fh: fh.write(text.encode()))


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write_bytes(path, lambda fh: torch.save(state, fh))


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type when empty), for one-line errors."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``: nothing is unpickled).

    Raises `RunError` naming the file and what to do when it is missing, unreadable, or
    written by a version of Departures whose checkpoints this one cannot read.
    """
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path.parent} has no {path.name}; it is not a trained run folder.")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        reason = first_line(exc)
        raise RunError(
            f"{path} is corrupt or not a Departures checkpoint ({reason}). "
            f"The run in {path.parent} cannot be opened or resumed: train it again, or "
            f"restore {path.name} from an intact copy of the folder."
        ) from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise RunError(
            f"{path} was written by an incompatible version of Departures "
            f"(checkpoint format {found if found is not None else 'unknown'}"
            f"{_written_by(state)}; this version {library_version()} reads format "
            f"{CHECKPOINT_FORMAT}). Train the run in {path.parent} again with this version."
        )
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise RunError(
            f"{path} lacks {', '.join(missing)}: it was written by an older or incompatible "
            f"version of Departures{_written_by(state)}. Train the run in {path.parent} "
            f"again with this version ({library_version()})."
        )
    return state


def _written_by(state) -> str:
    version = state.get("library_version") if isinstance(state, dict) else None
    return f", written by version {version}" if version else ""
