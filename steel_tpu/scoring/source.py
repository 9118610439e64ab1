"""The model source every scoring command takes: `--workdir` (repeated), a system folder or a kit, resolved once.

A ModelSource knows its members (each a formats.fold_models.FoldModels: a workdir, or a kit's model set), where its
own thresholds live (a system's or kit's folder; one workdir's own), and which workdirs an ensemble's thresholds
must have been tuned for. `plan` checks, before any model is built, that the members can be averaged and that the
thresholds fit them. Host only: nothing here imports TensorFlow.
"""

import dataclasses
import os

from steel_tpu import postprocess, storage
from steel_tpu.formats import kit as kit_lib
from steel_tpu.formats import system
from steel_tpu.formats import thresholds as thresholds_format
from steel_tpu.formats.workdir import Workdir
from steel_tpu.scoring import members as members_lib
from steel_tpu.scoring.members import MembersError, normalized

KINDS = ("workdir", "ensemble", "system", "kit")


@dataclasses.dataclass(frozen=True)
class Member:
    """What to load from one member: its models, config, the folds of each task, and their identity."""

    path: str
    models: object  # a FoldModels
    config: object
    folds: dict  # task -> fold numbers to load
    identity: dict  # task -> [(weights path, bytes)]: what a resumed run must find unchanged


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a scoring run uses: its post-processing (and the Thresholds it came from, None for defaults), where that
    came from, and the Members to load."""

    postprocess: postprocess.PostProcess
    thresholds_from: str
    thresholds: object
    members: tuple

    @property
    def segmenting(self):
        """The members that bring segmenters (the input size and scoring batch are theirs)."""
        return [m for m in self.members if "segment" in m.folds]

    @property
    def segment_size(self):
        """(h, w) every segmenter takes (checked when planned): the size the input pipeline decodes each image to."""
        return members_lib.segment_size(self.segmenting[0].config)


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """The trained models a command was given: `given` (the --workdir paths as typed), its members, its `home`
    (the system or kit folder whose thresholds.json is its own; None otherwise) and its `kind` (KINDS)."""

    given: tuple
    stores: tuple
    home: str | None
    kind: str
    # A kit's record of the workdirs its thresholds were tuned for (its members, and any whose models it leaves out
    # because the thresholds do not use them: a system's classifiers where no gate was tuned); None: the stores'.
    tuned: tuple | None = None

    @classmethod
    def resolve(cls, work):
        """The source `work` names: one path (a workdir, a system folder or a kit) or several workdirs (a list);
        a ModelSource is returned as it is."""
        if isinstance(work, ModelSource):
            return work
        given = (str(work),) if isinstance(work, (str, os.PathLike)) else tuple(str(p) for p in work)
        if not given:
            raise MembersError("no workdir given")
        if len(given) == 1 and kit_lib.is_kit(given[0]):
            kit = kit_lib.Kit(given[0])
            return cls(given=given, stores=kit.members(), home=given[0], kind="kit", tuned=kit.tuned_for())
        if len(given) == 1 and system.is_system(given[0]):
            return cls(given=given, stores=tuple(Workdir(p) for p in system.member_paths(given[0])), home=given[0],
                       kind="system")
        for path in given:
            if len(given) > 1 and (system.is_system(path) or kit_lib.is_kit(path)):
                what = "a system (system.json)" if system.is_system(path) else "a kit (kit.json)"
                raise MembersError(f"{path} is {what}: give it alone as --workdir, or its members")
        return cls(given=given, stores=tuple(Workdir(p) for p in _distinct(given)), home=None,
                   kind="workdir" if len(given) == 1 else "ensemble")

    def __str__(self):
        return ", ".join(self.given)

    @property
    def paths(self):
        """The member paths (a system's member workdirs, a kit's member folders)."""
        return tuple(s.path for s in self.stores)

    @property
    def tuned_for(self):
        """The workdirs an ensemble's thresholds must record, normalized: a kit's record of them."""
        if self.tuned is not None:
            return list(self.tuned)
        return [normalized(s.path) for s in self.stores]

    def workdirs(self, *, command):
        """The member Workdirs, for commands that read training data (OOF, shards.json); a kit is refused."""
        if self.kind == "kit":
            raise MembersError(f"{self.home} is an exported kit: `steel-tpu {command}` needs the training workdirs "
                               "(a kit holds no out-of-fold data)")
        return self.stores

    def own_folder(self):
        """Where this source's own outputs go (thresholds, rescore.json): the system or kit folder, one workdir's
        own; None for several workdirs (an ensemble has no folder: tune --out names one)."""
        return self.home or (self.paths[0] if len(self.stores) == 1 else None)

    # --- thresholds ---

    def thresholds(self, given=None, *, required_by=None):
        """The Thresholds scoring uses: `given` (a path, or Thresholds already read), else the source's own (a
        system's or kit's, one workdir's); None when untuned, unless `required_by` (a command name) refuses that.
        Refused: thresholds tuned for other workdirs (check_tuned), and several workdirs without `given`. A
        PostProcess given from Python (a rule chosen in code: tests, benchmarks) is used as it is, unchecked."""
        if isinstance(given, postprocess.PostProcess):
            return thresholds_format.Thresholds(postprocess=given, record={}, path=None)
        if isinstance(given, thresholds_format.Thresholds):
            if given.path is not None:  # read from a file: tuned for some workdirs, which must be these
                self.check_tuned(given)
            return given
        self.check_thresholds_given(given)
        path = given or storage.join(self.own_folder(), thresholds_format.FILE)
        found = thresholds_format.read(path) if given else thresholds_format.read_if_present(path)
        if found is None:
            if required_by:
                raise FileNotFoundError(f"{path}: not found: `steel-tpu {required_by}` uses tuned thresholds; run "
                                        f"`steel-tpu tune --workdir {self.home or self.paths[0]}` first, or give "
                                        "--thresholds FILE")
            return None
        self.check_tuned(found)
        return found

    def check_thresholds_given(self, given):
        """Refuse several workdirs without `given` thresholds (no member's own fit their ensemble): a command calls
        this before it deletes a previous output."""
        if given is None and self.own_folder() is None:
            raise MembersError("several --workdir need --thresholds: the ensemble's thresholds.json from `steel-tpu "
                               "tune --workdir W0 --workdir W1 ... --out DIR` (no member's own thresholds fit them)")

    def check_tuned(self, found):
        """Refuse Thresholds tuned for other workdirs: one workdir needs ones tuned without members (its own OOF),
        several need ones tuned for exactly them. Thresholds of other models' averaged OOF maps would be applied
        silently to different probabilities: refused, never warned."""
        tuned, given = found.members, self.tuned_for
        if tuned is None and len(given) > 1:
            raise MembersError(f"{found.path}: tuned for one workdir, not for the ensemble of {', '.join(given)}; run "
                               "`steel-tpu tune` with every --workdir and --out DIR, then give --thresholds "
                               "DIR/thresholds.json")
        if tuned is not None and sorted(p for p, _ in tuned) != sorted(given):
            raise MembersError(f"{found.path}: tuned for the ensemble of {', '.join(p for p, _ in tuned)}, not of "
                               f"{', '.join(given)}; run `steel-tpu tune` with these --workdir's and --out DIR")

    # --- members ---

    def plan(self, *, thresholds=None, folds=None, tasks=None, required_by=None):
        """The Plan scoring runs with, checked before any model is built: the thresholds fit the members, every
        requested fold exists, the segmenters take one input size, the classifiers gate with one rule, a gate has
        every classifier the members' configs train, and a fold model tune did not average is named (it scores
        too). `tasks`: the models to load (default: those the post-processing needs)."""
        found = self.thresholds(thresholds, required_by=required_by)
        if found is None:
            pp, pp_from = postprocess.PostProcess(), "defaults"
            print(f"predict: no {storage.join(self.own_folder(), thresholds_format.FILE)}: using defaults (pixel "
                  f"threshold 0.5, no min area, no gate); run `steel-tpu tune --workdir {self}` first to tune them")
        else:
            pp, pp_from = found.postprocess, found.path or "given"
        planned = tuple(m for m in (self._member(s, folds=folds, tasks=tasks or pp.tasks) for s in self.stores)
                        if m.folds)
        segmenting = [m for m in planned if "segment" in m.folds]
        if not segmenting:
            raise MembersError(f"{self}: no workdir trains a segmenter (config `tasks`): nothing draws a mask")
        members_lib.check_segment_sizes([(m.path, m.config) for m in segmenting])
        members_lib.gate_rule([(m.path, members_lib.gate_kind(m.config)) for m in planned if "classify" in m.folds])
        for m in planned:
            if pp.needs_classifier and "classify" in m.config.tasks and not m.folds.get("classify"):
                raise FileNotFoundError(f"{pp_from} gates on a classifier, but {m.path} has no completed classify "
                                        "folds")
        if pp.needs_classifier and not any(m.folds.get("classify") for m in planned):
            raise FileNotFoundError(f"{pp_from} gates on a classifier, but no workdir of {self} trains one (config "
                                    "`tasks`)")
        if len(planned) > 1 and found is not None and found.members is not None:
            unseen = unseen_models(found, planned)
            if unseen:
                print(f"predict: {len(unseen)} fold model(s) tune did not average (e.g. {unseen[0]}) score too: "
                      f"{pp_from} was tuned on the others' out-of-fold maps")
        return Plan(postprocess=pp, thresholds_from=pp_from, thresholds=found, members=planned)

    @staticmethod
    def _member(models, *, folds, tasks):
        cfg = models.config()
        chosen = {name: [f for f in models.completed_folds(name) if folds is None or f in folds]
                  for name in tasks if name in cfg.tasks}
        if "segment" in chosen:
            # The segmenters make the masks: every requested fold must have one; classifiers only gate.
            missing = sorted(set(folds or ()) - set(chosen["segment"]))
            if missing:
                raise FileNotFoundError(f"{models.path}: segment folds {missing} are not complete")
            if not chosen["segment"]:
                raise FileNotFoundError(f"{models.path}: no completed segment folds (segment/fold*/done.json): "
                                        "nothing to predict with")
        elif "classify" in chosen and not chosen["classify"]:
            raise FileNotFoundError(f"{models.path}: no completed classify folds (classify/fold*/done.json): its "
                                    "config trains only a classifier, and it has none to gate with")
        return Member(path=models.path, models=models, config=cfg, folds=chosen, identity=models.identity(chosen))


def _distinct(paths):
    """`paths`, refused when one is given twice (as the same normalized path)."""
    seen = {}
    for path in paths:
        if normalized(path) in seen:
            raise MembersError(f"workdir {path} is given twice (as {seen[normalized(path)]} too): each member once")
        seen[normalized(path)] = path
    return paths


def unseen_models(found, planned):
    """Paths of fold models `planned` uses that the ensemble Thresholds `found` did not average; one whose bytes
    differ from when it was tuned is refused."""
    sizes = {p: n for _, ident in found.members for p, n in ident.items()}
    unseen = []
    for member in planned:
        for path, n in (item for ident in member.identity.values() for item in ident):
            key = normalized(path)
            if key not in sizes:
                unseen.append(path)
            elif sizes[key] != n:
                raise MembersError(f"{found.path}: {path} is {n} bytes, {sizes[key]} when these thresholds were "
                                   "tuned: the model changed since; run `steel-tpu tune` again")
    return unseen
