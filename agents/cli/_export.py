"""``cellgym export`` and ``cellgym import``: trade agents with stable-baselines3's own ``model.zip``.

``cellgym export RUN --format sb3`` writes a standard SB3 ``model.zip`` (``PPO.load("model.zip")`` works; with
``normalize: true`` also SB3's ``vecnormalize.pkl``). ``cellgym import ZIP --algo ppo --env TASK --out DIR
--trust-pickle`` turns an SB3 zip into a cellgym checkpoint. SB3 zips hold cloudpickled objects that run
code when loaded, so importing one needs ``--trust-pickle``: only import files you made or trust. cellgym's
own checkpoints stay pickle-free.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from cellgym.predictors.base.errors import CellgymError, CheckpointError

__all__ = ["add_parser", "export_sb3", "import_sb3"]

PICKLE_RISK = ("an SB3 .zip holds cloudpickled Python objects, and loading it runs whatever code they carry: "
               "anyone who could write the file can run code as you")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``export`` and ``import``."""
    p = sub.add_parser("export", help="write a trained run as a stable-baselines3 model.zip",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN", help="run folder (runs/<algo>/<task>_<k>)")
    p.add_argument("--format", default="sb3", choices=["sb3"], help="sb3: SB3's model.zip (default)")
    p.add_argument("--out", default=None, metavar="ZIP", help="output file (default RUN/sb3/model.zip)")
    p.add_argument("--load-best", action="store_true", help="export best_model/ instead of model/")
    p.set_defaults(run=run_export)
    q = sub.add_parser("import", help="turn a stable-baselines3 model.zip into a cellgym checkpoint (--trust-pickle)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("zip", metavar="ZIP", help="SB3 model.zip")
    q.add_argument("--algo", required=True, help="ppo, a2c, dqn, sac, td3 or maskable_ppo")
    q.add_argument("--out", required=True, metavar="DIR", help="cellgym checkpoint folder to write")
    q.add_argument("--trust-pickle", action="store_true",
                   help=f"required: {PICKLE_RISK}")
    q.set_defaults(run=run_import)


def _run_config(run_dir: Path) -> dict[str, Any]:
    file = run_dir / "config.yml"
    if not file.is_file():
        raise CheckpointError(f"export {run_dir}: no config.yml; pass a run folder made by `cellgym train`.")
    return yaml.safe_load(file.read_text())


def export_sb3(run_dir: str | Path, out: str | Path | None = None, *, best: bool = False) -> Path:
    """Write the run's agent as SB3 ``model.zip`` (and ``vecnormalize.pkl`` when it normalises); returns the zip."""
    import gymnasium

    import cellgym.envs  # noqa: F401  (registers the tasks)
    from cellgym.agents.zoo import SB3Agent
    from cellgym.agents.zoo._normalize import NORMALIZE_FILE

    run_dir = Path(run_dir)
    config = _run_config(run_dir)
    if config.get("parallel") or config.get("backend") == "ray":
        raise CellgymError(f"export {run_dir}: only SB3 runs export to SB3's format (this is {config['algo']}).")
    folder = run_dir / ("best_model" if best else "model")
    env = gymnasium.make(config["task"], **config["hyperparams"].get("env_kwargs", {}))
    agent = SB3Agent.load(folder, env=env)
    zip_path = Path(out) if out else run_dir / "sb3" / "model.zip"
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = zip_path.with_name(zip_path.stem + ".tmp.zip")
    agent.model.save(tmp)  # SB3's own writer: data JSON + cloudpickle, policy.pth, optimizer .pth
    tmp.replace(zip_path)
    if (folder / NORMALIZE_FILE).is_file():
        _export_vecnormalize(folder, config, zip_path.parent / "vecnormalize.pkl")
    env.close()
    return zip_path


def _export_vecnormalize(folder: Path, config: dict[str, Any], path: Path) -> None:
    import torch
    from stable_baselines3.common.vec_env import VecNormalize

    from cellgym.agents.zoo import make_sb3_vec_env
    from cellgym.agents.zoo._normalize import NORMALIZE_FILE, restore_stats

    options = yaml.safe_load((folder / "config.yaml").read_text()).get("normalize", {})
    venv = VecNormalize(make_sb3_vec_env(config["task"], 1, env_kwargs=config["hyperparams"].get("env_kwargs")),
                        training=False, **options)
    restore_stats(venv, torch.load(folder / NORMALIZE_FILE, weights_only=True))
    tmp = path.with_name(path.name + ".tmp")
    venv.save(str(tmp))
    tmp.replace(path)
    venv.close()


def import_sb3(zip_path: str | Path, algo: str, out: str | Path, *, trust_pickle: bool = False) -> Path:
    """Read an SB3 ``model.zip`` (runs its pickled code: needs ``trust_pickle=True``) into a cellgym checkpoint."""
    from cellgym.agents.zoo import SB3Agent
    from cellgym.agents.zoo._hyperparams import _ACTIVATIONS, _OPTIMIZERS, algo_class

    if not trust_pickle:
        raise CellgymError(f"import {zip_path}: refused without --trust-pickle: {PICKLE_RISK}. cellgym checkpoints "
                           "(config.yaml + weights.pt) never need this.")
    if not Path(zip_path).is_file():
        raise CheckpointError(f"import {zip_path}: no such file.")
    model = algo_class(algo).load(zip_path, device="cpu")
    policy_kwargs: dict[str, Any] = {}
    names = {"activation_fn": {v: k for k, v in _ACTIVATIONS.items()},
             "optimizer_class": {v: k for k, v in _OPTIMIZERS.items()}}
    for key, value in (model.policy_kwargs or {}).items():
        if key in names:
            if value.__name__ not in names[key]:
                raise CheckpointError(f"import {zip_path}: policy_kwargs.{key}={value.__name__} has no cellgym name "
                                      f"(known: {sorted(names[key])}).")
            policy_kwargs[key] = names[key][value.__name__]
        elif key == "net_arch" or isinstance(value, (int, float, str, bool)):
            policy_kwargs[key] = value
        else:
            raise CheckpointError(f"import {zip_path}: policy_kwargs.{key} ({type(value).__name__}) is not plain "
                                  "data, so it cannot go into a pickle-free checkpoint.")
    agent = SB3Agent(algo, policy=_policy_alias(model), policy_kwargs=policy_kwargs)
    agent.model = model
    return agent.save(out)


def _policy_alias(model: Any) -> str:
    """The alias (``MlpPolicy``, ...) under which ``model``'s policy class is registered."""
    for alias, cls in model.policy_aliases.items():
        if type(model.policy) is cls:
            return alias
    raise CheckpointError(f"policy class {type(model.policy).__name__} has no SB3 alias; cellgym stores policies by alias.")


def run_export(args: argparse.Namespace) -> int:
    """``cellgym export``."""
    path = export_sb3(args.run_dir, args.out, best=args.load_best)
    print(f"wrote {path} (load with stable_baselines3: <Algo>.load({str(path)!r}))")
    return 0


def run_import(args: argparse.Namespace) -> int:
    """``cellgym import``."""
    path = import_sb3(args.zip, args.algo, args.out, trust_pickle=args.trust_pickle)
    print(f"wrote cellgym checkpoint {path} (config.yaml + weights.pt)")
    return 0
