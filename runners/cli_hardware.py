"""`tier-runner hardware`: this machine, and where the active profile puts each tier (with the fit check).

It lives in runners/ because it needs both floors: the machine and profile (hardware/) and each runner's
own memory estimate (`Runner.memory_needs`), every replica of a pool."""

from __future__ import annotations

import click

from hardware.detect import detect, gib


@click.command()
@click.option("--profile", default="workstation", show_default=True, envvar="TIER_RUNNER_PROFILE",
              help="hardware profile: a name under hardware/profiles or a YAML path")
def hardware(profile: str) -> None:
    """Print the CPU, RAM and GPUs, then each tier's placement and whether the profile fits."""
    from hardware.errors import ConfigError
    from hardware.fit import check_devices, check_fit
    from hardware.profile import load_profile
    from runners.pool import build_tier_runner
    from runners.supervisor import placed

    machine = detect()
    click.echo(f"cpu: {machine.cpu_model}, {machine.cores} cores usable, flags: {' '.join(machine.cpu_flags) or 'none'}")
    click.echo(f"ram: {gib(machine.ram_available)} available of {gib(machine.ram_total)}")
    if machine.gpus:
        for g in machine.gpus:
            click.echo(f"gpu: cuda:{g.index} {g.name}, {gib(g.memory_free)} free of {gib(g.memory_total)}")
    else:
        click.echo(f"gpu: none ({machine.gpu_probe})")
    path, prof = load_profile(profile)
    click.echo(f"profile: {path}")
    runners = {tier: build_tier_runner(tier, placement, str(path), prof.devices)
               for tier, placement in sorted(prof.tiers.items())}
    needs, problems, used = [], [], {}
    for who, runner in placed(runners):
        line = f"  {who}: {runner.placement.runner} {runner.model_name} on {runner.placement.device or 'remote'}"
        try:
            own = runner.memory_needs()
        except ConfigError as exc:
            own, problems = [], problems + [f"{who}: {exc.message}"]
            line += ": model not available"
        if runner.device is not None:
            used[who] = (runner.placement.device, runner.device)
        needs += own
        for need in own:
            line += f": {need.device_name}: weights {gib(need.weights)} + KV {gib(need.kv_cache)} + runtime " \
                    f"{gib(need.overhead)}" + (f" ({need.note})" if need.note else "")
        click.echo(line)
    try:
        check_devices(used, machine, str(path))
        if problems:
            raise ConfigError(" | ".join(problems))
        for p in check_fit(needs, machine, str(path)):
            click.echo(f"fit: {p.where}: tiers {', '.join(map(str, p.tiers))} need {gib(p.need)} of {gib(p.capacity)}: ok")
    except ConfigError as exc:
        click.echo(f"fit: NO: {exc.message}")
        raise SystemExit(1) from None
