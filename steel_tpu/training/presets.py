"""Training a preset: one workdir, or a system's member workdirs one after another (system.json first)."""

from steel_tpu import storage
from steel_tpu.data.shard_folder import ShardFolder
from steel_tpu.device import distribute
from steel_tpu.formats import outputs, system
from steel_tpu.training import train


def run_preset(*, shards, workdir, name, members, tasks=None, folds=None, device=None, pseudo=None):
    """Train preset `name` ({member: Config}, config.members_of) into `workdir`: one workdir (run), or a system's
    member workdirs (run_system)."""
    if None in members:
        return train.run(shards=shards, workdir=workdir, cfg=members[None], tasks=tasks, folds=folds, device=device,
                   pseudo=pseudo)
    return run_system(shards=shards, workdir=workdir, name=name, members=members, tasks=tasks, folds=folds,
                      device=device, pseudo=pseudo)


def run_system(*, shards, workdir, name, members, tasks=None, folds=None, device=None, pseudo=None):
    """Train the system `name` ({member: Config}, config.members_of) into `workdir`: system.json first, then each
    member into workdir/<member> (run), those of its tasks among `tasks` (default: all), on one device."""
    outputs.check_folder(workdir, flag="--workdir")
    folder = ShardFolder.open(shards, split="train").check()  # bad shards fail before system.json is written
    plan = {member: cfg.tasks if tasks is None else tuple(t for t in tasks if t in cfg.tasks)
            for member, cfg in members.items()}
    for member, cfg in members.items():
        try:
            own_folds = train.check_folds(folder, cfg.folds if folds is None else folds, shards=shards)
            train.check_sampling(folder, cfg=cfg, tasks=plan[member], folds=own_folds)
            train.check_backend(cfg, tasks=plan[member])
        except ValueError as error:
            raise ValueError(f"[{name}] member {member}: {error}") from None
    system.claim(workdir, name=name, members=members)
    first = next(iter(members.values()))  # a preset's members share the device keys
    device = device or distribute.select_strategy(tpu=first.tpu, prefer=distribute.prefer_for(first.device),
                                                  verbose=False)
    results = []
    for member, cfg in members.items():
        if plan[member]:
            print(f"[{name}] member {member}: {', '.join(plan[member])}")
            results += train.run(shards=shards, workdir=storage.join(workdir, member), cfg=cfg, tasks=plan[member],
                           folds=folds, device=device, pseudo=pseudo)
    return results
