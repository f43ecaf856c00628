"""`millrace` command line: run, demo, validate, check.

Exit codes: 0 success; 1 the command ran but found failures (a commissioning FAIL, a
shutdown problem); 2 the configuration is invalid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__
from gateway.configload import LoadedConfig, load_config
from gateway.errors import ConfigError, MillraceError
from gateway.logs import setup_logging

EXIT_OK, EXIT_FAILURES, EXIT_CONFIG = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_CONFIG
    try:
        return int(args.func(args))
    except ConfigError as exc:
        _print_problems(getattr(args, "config", "config"), exc.problems)
        return EXIT_CONFIG
    except MillraceError as exc:
        print(f"millrace: {exc}", file=sys.stderr)
        return EXIT_FAILURES
    except KeyboardInterrupt:
        return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="millrace", description="Millrace edge gateway for factory and farm equipment."
    )
    p.add_argument("--version", action="version", version=f"millrace {__version__}")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    run = sub.add_parser("run", help="run the gateway with a config file")
    run.add_argument("-c", "--config", required=True, help="gateway YAML file")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="run simulators, gateway and local API on embedded defaults")
    demo.add_argument("--port", type=int, default=8080, help="API port (default 8080)")
    demo.add_argument("--host", default="127.0.0.1", help="API address (default 127.0.0.1)")
    demo.add_argument("--data-dir", default=".millrace-demo", help="where the demo store lives")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.add_argument(
        "--wear-rate",
        type=float,
        default=2000.0,
        help="how much faster the simulated bearings wear than real time (default 2000)",
    )
    demo.set_defaults(func=cmd_demo)

    val = sub.add_parser("validate", help="check a config file and print a summary")
    val.add_argument("-c", "--config", required=True, help="gateway YAML file")
    val.set_defaults(func=cmd_validate)

    chk = sub.add_parser("check", help="commissioning report: probe every device and point once")
    chk.add_argument("-c", "--config", required=True, help="gateway YAML file")
    chk.set_defaults(func=cmd_check)
    return p


# -- validate ------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    loaded = load_config(args.config)
    print(summary(loaded))
    return EXIT_OK


def _print_problems(source: str, problems: list[str]) -> None:
    n = len(problems)
    print(f"{source}: {n} problem{'s' if n != 1 else ''}", file=sys.stderr)
    for line in problems:
        print(line, file=sys.stderr)


def summary(loaded: LoadedConfig) -> str:
    """One screen: who this gateway is, what it talks to, where it keeps data."""
    cfg = loaded.config
    lines = [
        f"config OK: {loaded.source or '(inline)'}",
        f"gateway  {cfg.gateway.id} at site {cfg.gateway.site}"
        + (f" ({cfg.gateway.name})" if cfg.gateway.name else ""),
        f"devices  {len(cfg.devices)}",
    ]
    for d in cfg.devices[:15]:
        profile = loaded.profile_for(d)
        where = f"{d.connection_key}#{d.unit_id}"
        state = "" if d.enabled else "  (disabled)"
        lines.append(
            f"  {d.id:<20} {d.protocol:<11} {where:<32} {profile.name:<18} "
            f"{len(profile.points):>3} points every {d.poll_interval:g}s{state}"
        )
    if len(cfg.devices) > 15:
        lines.append(f"  ... and {len(cfg.devices) - 15} more")
    lines.append(f"equipment {len(cfg.equipment)}")
    for e in cfg.equipment[:10]:
        lines.append(f"  {e.id:<20} {e.type:<18} on {e.device}  owner: {e.owner or '-'}")
    if len(cfg.equipment) > 10:
        lines.append(f"  ... and {len(cfg.equipment) - 10} more")
    st = cfg.store
    lines.append(
        f"store    {loaded.store_path()}  cap {st.max_bytes / 1024**2:.0f} MiB, "
        f"{st.drop_policy}, history {st.history_retention / 86400:g} d, sync {st.synchronous}"
    )
    api = cfg.api
    lines.append(
        f"api      {'https' if api.tls else 'http'}://{api.host}:{api.port}"
        if api.enabled
        else "api      disabled"
    )
    return "\n".join(lines)


# -- run -----------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    loaded = load_config(args.config)
    log = loaded.config.logging
    setup_logging(log.level, log.format, loaded.secret_values)
    return asyncio.run(_serve(loaded))


async def _serve(
    loaded: LoadedConfig, duration: float | None = None, banner: str | None = None
) -> int:
    from gateway.runtime import Gateway

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    gateway = Gateway(loaded)
    await gateway.start()
    if gateway.api_url:
        print(f"millrace: gateway {loaded.config.gateway.id} API on {gateway.api_url}", flush=True)
    if banner:
        print(banner, flush=True)
    try:
        if duration is None:
            await stop.wait()
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), duration)
    finally:
        problems = await gateway.stop()
    return EXIT_FAILURES if problems else EXIT_OK


# -- demo ----------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    setup_logging("info", "text")
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    return asyncio.run(run_demo(args))


async def run_demo(args: argparse.Namespace) -> int:
    from gateway.demo import demo_config
    from simulators.modbus_plant import ModbusPlant

    data_dir = Path(args.data_dir)
    async with ModbusPlant.tcp(
        units=["pump-station:1", "sugarcane-press:2"],
        host="127.0.0.1",
        port=0,
        wear_rate=args.wear_rate,
    ) as plant:
        loaded = demo_config(
            modbus_port=plant.port, api_host=args.host, api_port=args.port, data_dir=data_dir
        )
        print(
            f"millrace demo: plant simulator on 127.0.0.1:{plant.port} "
            f"(pump station unit 1, cane press unit 2)",
            flush=True,
        )
        banner = (
            "millrace demo: live values at /points, device health at /devices, "
            "also /health, /metrics, /docs; Ctrl-C stops"
        )
        return await _serve(loaded, args.duration, banner)


# -- check ---------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    loaded = load_config(args.config)
    setup_logging("warning", "text", loaded.secret_values)
    return asyncio.run(_check(loaded))


async def _check(loaded: LoadedConfig) -> int:
    from gateway.check import commissioning_report

    text, all_ok = await commissioning_report(loaded)
    print(text)
    return EXIT_OK if all_ok else EXIT_FAILURES


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
