"""The sources ``embedlab serve`` compares: the working tree and any git revision or DVC experiment of the repository.

A revision's outputs are read through DVC (``DVCFileSystem``): from the local cache when they are there, streamed
from the default remote when they are not, never retrained. They are copied once into
``.dvc/tmp/embedlab-serve/<commit>/`` (DVC's git-ignored scratch folder), laid out as in the repository, so the
server reads a revision through a :class:`Layout` exactly as it reads the working tree. The copy appears under its
final name only when complete: an interrupted start-up leaves nothing a later one would trust.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from embedlab.core.errors import UserError
from embedlab.core.files import atomic_dir
from embedlab.core.layout import STACK, Layout
from embedlab.core.params import Params, load_params

WORKSPACE = "workspace"  # DVC's own name for the working tree (dvc exp show, dvc params diff)
SCRATCH = Path(".dvc") / "tmp" / "embedlab-serve"


class SourceError(UserError):
    """A source that cannot be served: its outputs are missing, unreachable, or not comparable with the others."""


class UnknownRevision(SourceError):
    """A name that is no commit, branch, tag or DVC experiment of the repository."""


@dataclass(frozen=True)
class Revision:
    """A source as the picker lists it: its name, what kind of name it is, and the commit (None: the working tree)."""

    name: str
    kind: str  # workspace | head | branch | tag | experiment | commit
    commit: str | None

    def as_dict(self) -> dict:
        """The JSON form of ``/api/revisions``."""
        return {"name": self.name, "kind": self.kind, "commit": self.commit}


def list_revisions(root: Path) -> list[Revision]:
    """The working tree, ``HEAD``, the branches, the tags and every ``dvc exp list --all-commits`` entry."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo
    from scmrepo.exceptions import SCMError

    revisions = [Revision(WORKSPACE, "workspace", None)]
    try:
        repo = Repo(str(root))
    except NotDvcRepoError:  # e.g. a copied results folder: only the working tree
        return revisions
    with repo:
        scm = repo.scm
        try:
            revisions.append(Revision("HEAD", "head", scm.get_rev()))
        except SCMError:  # no git, or no commit yet
            return revisions
        revisions += [Revision(b, "branch", scm.resolve_rev(b)) for b in sorted(scm.list_branches())]
        revisions += [Revision(t, "tag", scm.resolve_rev(t)) for t in sorted(scm.list_tags())]
        for experiments in repo.experiments.ls(all_commits=True).values():
            revisions += [Revision(name, "experiment", commit) for name, commit in experiments if commit]
    return revisions


def resolve(root: Path, name: str) -> Revision:
    """The revision a name means: the working tree, a listed branch, tag or experiment, or any git revision."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from scmrepo.exceptions import SCMError

    revisions = list_revisions(root)
    listed = {rev.name: rev for rev in reversed(revisions)}  # the first listed wins: a branch over an experiment
    if name in listed:
        return listed[name]
    try:
        with Repo(str(root)) as repo:
            return Revision(name, "commit", repo.scm.resolve_rev(name))
    except (SCMError, DvcException) as err:  # not a git revision (scmrepo's RevError), or no repository at all
        known = ", ".join(dict.fromkeys(rev.name for rev in revisions))
        raise UnknownRevision(
            f"unknown revision {name!r}: not a commit, branch, tag or `dvc exp list` entry here (listed: {known})"
        ) from err


def required_files(params: Params) -> list[Path]:
    """What the server cannot do without, relative to the repository root: the prepared images, each backbone's
    model and embeddings, the stacker and the stack's embeddings."""
    paths = Layout(Path())
    files = [paths.prepared]
    for model in params.model_names:
        files += [paths.stacker] if model == STACK else [paths.model(model)]
        files.append(paths.embeddings(model))
    return files


def optional_files(params: Params) -> list[Path]:
    """What the page shows when it is there: ``dvc.lock``, each model's retrieval metrics and its cluster maps."""
    paths = Layout(Path())
    files = [paths.lock]
    for model in params.model_names:
        files.append(paths.metrics("retrieval", model))
        files += [paths.plot("cluster", method, f"{model}.json") for method in params.cluster.method.split("+")]
    return files


def materialize(root: Path, revision: Revision) -> Layout:
    """The revision's outputs as a :class:`Layout`: the working tree itself, or a complete copy read through DVC."""
    if revision.commit is None:
        return Layout(root)
    target = root / SCRATCH / revision.commit
    if target.is_dir():
        return Layout(target)
    from dvc.api import DVCFileSystem

    with atomic_dir(target) as staging:  # complete, or not there at all
        fs = DVCFileSystem(str(root), rev=revision.commit)
        _copy(fs, Layout(Path()).params, staging, revision, required=True)
        try:
            params = load_params(staging / "params.yaml")
        except UserError as err:
            raise SourceError(f"{revision.name}: its params.yaml does not validate here ({err})") from None
        for path in required_files(params):
            _copy(fs, path, staging, revision, required=True)
        for path in optional_files(params):
            _copy(fs, path, staging, revision, required=False)
    return Layout(target)


def _copy(fs, path: Path, staging: Path, revision: Revision, *, required: bool) -> None:
    """Copy one file or folder of the revision into ``staging``, or say why it cannot be had."""
    try:
        info = fs.info(path.as_posix())
    except FileNotFoundError:
        info = None
    dvc_info = (info or {}).get("dvc_info") or {}
    if info is None or (dvc_info.get("isout") and not dvc_info.get("md5")):  # absent, or declared but never run
        if required:
            raise SourceError(
                f"{revision.name}: has no {path.as_posix()} (was `dvc repro` run and its dvc.lock committed there?)"
            )
        return
    (staging / path).parent.mkdir(parents=True, exist_ok=True)
    try:
        fs.get(path.as_posix(), str(staging / path), recursive=info["type"] == "directory")
    except FileNotFoundError as err:
        raise SourceError(
            f"{revision.name}: {path.as_posix()} is neither in the local DVC cache nor on a reachable remote "
            f"({err.strerror or err}); `dvc remote list` shows where it would come from"
        ) from None
