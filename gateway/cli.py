"""`millrace` command line: run, demo, validate, check, discover, certs, models.

Exit codes: 0 success; 1 the command ran but found failures (a commissioning FAIL, a
shutdown problem); 2 the configuration is invalid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from gateway import __version__, platforms
from gateway.configload import LoadedConfig, load_config
from gateway.deploy import box_services, load_box
from gateway.errors import ConfigError, MillraceError
from gateway.logs import setup_logging
from gateway.secrets import (
    exposed_config_warning,
    install_crash_redaction,
    print_crash,
    redact,
)

EXIT_OK, EXIT_FAILURES, EXIT_CONFIG = 0, 1, 2
#: `discover modbus --guess` reads a 32-bit pair this many times, this far apart: a byte
#: order that fits every value of a live signal is rarely a coincidence.
GUESS_SAMPLES, GUESS_INTERVAL = 4, 0.4


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_CONFIG
    install_crash_redaction()
    try:
        return int(args.func(args))
    except ConfigError as exc:
        _print_problems(getattr(args, "config", "config"), exc.problems)
        return EXIT_CONFIG
    except MillraceError as exc:
        print(redact(f"millrace: {exc}"), file=sys.stderr)
        return EXIT_FAILURES
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # a bug: show it, but never a secret it carried
        print_crash(exc)
        return EXIT_FAILURES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="millrace", description="Millrace edge gateway for factory and farm equipment."
    )
    p.add_argument("--version", action="version", version=f"millrace {__version__}")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    run = sub.add_parser("run", help="run the gateway with a config file")
    run.add_argument("-c", "--config", required=True, help="gateway YAML file")
    _platform_arg(run)
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
    _platform_arg(val)
    val.set_defaults(func=cmd_validate)

    disc = sub.add_parser("discover", help="find devices and write a starting profile")
    dsub = disc.add_subparsers(title="protocols", metavar="PROTOCOL")
    dm = dsub.add_parser("modbus", help="scan unit ids and readable ranges on Modbus TCP")
    dm.add_argument("url", help="tcp://HOST:PORT")
    dm.add_argument("--units", default="1-10", help="unit ids to try, e.g. 1-10 or 1,3,5")
    dm.add_argument(
        "--tables",
        default="holding_register,input_register,coil,discrete_input",
        help="comma-separated tables to scan",
    )
    dm.add_argument("--max-address", type=int, default=1000, help="scan addresses below this")
    dm.add_argument("--timeout", type=float, default=0.5, help="seconds per request")
    dm.add_argument(
        "--guess",
        action="append",
        default=[],
        metavar="TABLE:ADDRESS:LOW:HIGH",
        help="suggest the type and byte/word order of the 32-bit value at ADDRESS whose "
        "plausible range is LOW..HIGH (repeatable)",
    )
    dm.add_argument("--out", help="folder to write one starting profile per answering unit")
    dm.set_defaults(func=cmd_discover_modbus)

    do = dsub.add_parser("opcua", help="browse an OPC UA server and write a starting profile")
    do.add_argument("url", help="opc.tcp://HOST:PORT[/path]")
    do.add_argument("--depth", type=int, default=5, help="levels below Objects to browse")
    do.add_argument(
        "--include",
        action="append",
        default=None,
        metavar="GLOB",
        help="keep only browse paths matching (repeatable)",
    )
    do.add_argument(
        "--exclude",
        action="append",
        default=None,
        metavar="GLOB",
        help="skip browse paths matching (repeatable)",
    )
    do.add_argument("--max-nodes", type=int, default=2000)
    do.add_argument("--name", default="discovered", help="profile name")
    do.add_argument("--out", help="write the profile YAML here (default: print it)")
    do.add_argument("--security-policy", default="None", choices=["None", "Basic256Sha256"])
    do.add_argument("--security-mode", default="None", choices=["None", "Sign", "SignAndEncrypt"])
    do.add_argument("--certificate", help="client certificate (see millrace certs)")
    do.add_argument("--private-key", help="client private key")
    do.add_argument("--application-uri", help="must match the certificate's URI")
    do.add_argument("--username")
    do.add_argument(
        "--password-env", metavar="NAME", help="read the password from this environment variable"
    )
    do.add_argument("--server-certificate", help="pin the server's certificate")
    do.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    do.set_defaults(func=cmd_discover_opcua)

    certs = sub.add_parser("certs", help="create the OPC UA client certificate and key")
    certs.add_argument("--cert", default="millrace-client.der", help="certificate path")
    certs.add_argument("--key", default="millrace-client.pem", help="private key path")
    certs.add_argument(
        "--application-uri",
        required=True,
        help="the ApplicationUri the gateway presents, e.g. urn:millrace:gw-01",
    )
    certs.add_argument("--hostname", default=None, help="DNS name in the certificate")
    certs.add_argument("--days", type=int, default=3650)
    certs.add_argument("--force", action="store_true", help="overwrite existing files")
    certs.set_defaults(func=cmd_certs)

    chk = sub.add_parser("check", help="commissioning report: probe every device and point once")
    chk.add_argument("-c", "--config", required=True, help="gateway YAML file")
    _platform_arg(chk)
    chk.set_defaults(func=cmd_check)

    plat = sub.add_parser("platform", help="the hardware platform profile this box uses")
    _platform_arg(plat)
    plat.add_argument("--list", action="store_true", help="list the known profiles")
    plat.add_argument(
        "--systemd-dropin", action="store_true", help="print a millrace.service drop-in for it"
    )
    plat.set_defaults(func=cmd_platform)

    from gateway.equipment_cli import add_parser as add_equipment_parser

    add_equipment_parser(sub)

    from gateway.auth.cli import add_parser as add_auth_parser

    add_auth_parser(sub)

    mdl = sub.add_parser("models", help="the ONNX models: list them, measure them")
    msub = mdl.add_subparsers(title="models commands", metavar="WHAT")
    ml = msub.add_parser("list", help="each model's version, task, checksum state and budget")
    ml.add_argument("-c", "--config", help="gateway YAML (adds its model_paths)")
    ml.set_defaults(func=cmd_models_list)
    mb = msub.add_parser(
        "bench", help="latency at 1 thread and at N threads, throughput, engine overhead"
    )
    mb.add_argument("-c", "--config", help="gateway YAML (adds its model_paths and threads)")
    mb.add_argument("--model", action="append", help="only this model (repeatable)")
    mb.add_argument("--threads", type=int, help="threads for the second measurement")
    mb.add_argument("--calls", type=int, default=2000, help="timed calls per measurement")
    mb.add_argument("--json", action="store_true", help="print JSON instead of a table")
    mb.set_defaults(func=cmd_models_bench)
    return p


# -- models --------------------------------------------------------------------------------


def _model_folders(config: str | None) -> tuple[list[Path], int]:
    from gateway.inference.config import BUILTIN_MODELS, model_folders

    if config is None:
        return [BUILTIN_MODELS], 1
    loaded = load_config(config)
    inf = loaded.config.inference
    return model_folders(inf.model_paths, loaded.base_dir), inf.threads


def cmd_models_list(args: argparse.Namespace) -> int:
    from gateway.inference.bench import discover
    from gateway.inference.manifest import verify_file

    folders, _ = _model_folders(args.config)
    manifests, problems = discover([f for f in folders if f.is_dir()])
    for lm in manifests:
        checks = []
        for key, spec in lm.m.files.items():
            try:
                verify_file(lm.folder / spec.path, spec)
                checks.append(f"{key} ok")
            except MillraceError as exc:
                checks.append(f"{key} BAD ({exc})")
        print(
            f"{lm.m.name:<16} {lm.m.version:<8} run on {lm.m.run.on:<9} "
            f"budget {lm.m.latency_budget_ms:g} ms  {', '.join(checks)}  [{lm.folder}]"
        )
    for p in problems:
        print(f"BROKEN  {p}")
    return EXIT_FAILURES if problems else EXIT_OK


def cmd_models_bench(args: argparse.Namespace) -> int:
    import json

    from gateway.inference.bench import run_bench, table

    folders, threads = _model_folders(args.config)
    threads = args.threads or max(threads, os.cpu_count() or 1)
    report = run_bench(
        args.model,
        threads=threads,
        calls=max(100, args.calls),
        folders=[f for f in folders if f.is_dir()],
        progress=lambda msg: print(f"... {msg}", file=sys.stderr, flush=True),
    )
    print(json.dumps(report, indent=2) if args.json else table(report))
    if not report["results"]:
        print("millrace: no model measured", file=sys.stderr)
        return EXIT_FAILURES
    return EXIT_FAILURES if report["problems"] else EXIT_OK


# -- validate ------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    from gateway.runtime import Gateway

    loaded, det = load_box(args.config, args.platform)
    # Building the gateway (no I/O: nothing connects, the store is not opened) is what
    # checks the model bindings against the points the drivers declare.
    gw = Gateway(loaded, api=False)
    models = []
    for inst in gw.engine.instances:
        b = inst.binding
        where = f"items {b.items.device}/{b.items.channel}" if b.items else "points"
        state = f"UNUSABLE: {inst.error}" if inst.error else "manifest ok, bound"
        if inst.state == "disabled":
            state = "disabled"
        models.append(f"  {inst.id:<20} {inst.stamp:<22} {where}  {state}")
    print(summary(loaded, models, f"{det.profile.name} ({det.reason})"))
    for warning in platforms.port_warnings(loaded.config, det.profile):
        print(f"warning: {warning}")
    return EXIT_FAILURES if any(i.error for i in gw.engine.instances) else EXIT_OK


def _print_problems(source: str, problems: list[str]) -> None:
    n = len(problems)
    print(f"{source}: {n} problem{'s' if n != 1 else ''}", file=sys.stderr)
    for line in problems:
        print(line, file=sys.stderr)


def summary(loaded: LoadedConfig, models: Sequence[str] = (), platform: str | None = None) -> str:
    """One screen: who this gateway is, what it talks to, where it keeps data."""
    cfg = loaded.config
    lines = [
        f"config OK: {loaded.source or '(inline)'}",
        f"gateway  {cfg.gateway.id} at site {cfg.gateway.site}"
        + (f" ({cfg.gateway.name})" if cfg.gateway.name else "")
        + (f", platform {platform}" if platform else ""),
        f"devices  {len(cfg.devices)}",
    ]
    for d in cfg.devices[:15]:
        profile = loaded.profile_for(d)
        unit = getattr(d, "unit_id", None)
        where = d.connection_key.split("#")[0] + (f"#{unit}" if unit is not None else "")
        pace = getattr(d, "poll_interval", None)
        how = f"every {pace:g}s" if pace is not None and "modbus" in d.protocol else "subscribed"
        state = "" if d.enabled else "  (disabled)"
        lines.append(
            f"  {d.id:<14} {d.protocol:<10} {where:<34} {profile.name:<16} "
            f"{len(profile.points):>3} points {how}{state}"
        )
    if len(cfg.devices) > 15:
        lines.append(f"  ... and {len(cfg.devices) - 15} more")
    lines.append(f"equipment {len(cfg.equipment)}")
    for e in cfg.equipment[:5]:
        shared = "  shared" if e.sharing.shared else ""
        lines.append(
            f"  {e.id:<20} {e.type.value:<20} on {e.device}  owner: {e.owner.org or '-'}{shared}"
        )
    if len(cfg.equipment) > 5:
        lines.append(f"  ... and {len(cfg.equipment) - 5} more")
    st = cfg.store
    lines.append(
        f"store    {loaded.store_path()}  cap {st.max_bytes / 1024**2:.0f} MiB, "
        f"{st.drop_policy}, history {st.history_retention / 86400:g} d, sync {st.synchronous}"
    )
    inf = cfg.inference
    lines.append(
        f"models   {len(cfg.models)}  ({' > '.join(inf.providers)}, {inf.threads} threads)"
    )
    lines += models
    lines.append(f"uplinks  {', '.join(f'{u.name} ({u.type})' for u in cfg.uplinks) or 'none'}")
    pool = cfg.pool
    lines.append(
        f"pool     {pool.url} ({pool.transport}), sync every {pool.sync_interval:g}s, "
        f"snapshot every {pool.snapshot_interval:g}s"
        if pool is not None
        else "pool     none"
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
    loaded, det = load_box(args.config, args.platform)
    log = loaded.config.logging
    setup_logging(log.level, log.format, loaded.secret_values)
    if warning := exposed_config_warning(loaded.source):
        logging.getLogger("millrace.secrets").warning(warning)
    return asyncio.run(_serve(loaded, platform=det.profile.name))


async def _serve(
    loaded: LoadedConfig,
    duration: float | None = None,
    banner: str | None = None,
    *,
    platform: str | None = None,
    during: Callable[[Any], Awaitable[Any]] | None = None,
) -> int:
    """Run until SIGINT/SIGTERM (or `duration`). With `platform` (a real box, not the demo)
    the box services run beside it: systemd readiness and watchdog, balena fleet tags."""
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
        async with contextlib.AsyncExitStack() as box:
            if platform is not None:
                await box.enter_async_context(box_services(gateway, platform))
            if during is not None:
                side = asyncio.create_task(_side_show(during, gateway))
                box.callback(side.cancel)
            if duration is None:
                await stop.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), duration)
    finally:
        problems = await gateway.stop()
    return EXIT_FAILURES if problems else EXIT_OK


# -- demo ----------------------------------------------------------------------------------


async def _side_show(fn: Callable[[Any], Awaitable[Any]], gateway: Any) -> None:
    """Something the demo shows beside the gateway; its failure is reported, not fatal."""
    try:
        await fn(gateway)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        print(f"millrace demo: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    setup_logging("info", "text")
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    return asyncio.run(run_demo(args))


async def run_demo(args: argparse.Namespace) -> int:
    from gateway.demo import cooperative_demand, demo_config
    from simulators.central_pool import CentralPool
    from simulators.cogen_turbine import CogenTurbinePlant
    from simulators.grading_line import GradingLine
    from simulators.modbus_plant import ModbusPlant
    from simulators.mqtt_broker import MiniBroker
    from simulators.mqtt_farm import MqttFarm
    from simulators.opcua_machine import OpcuaMachineLine

    data_dir = Path(args.data_dir)
    async with contextlib.AsyncExitStack() as stack:
        plant = await stack.enter_async_context(
            ModbusPlant.tcp(
                units=["pump-station:1", "sugarcane-press:2"],
                host="127.0.0.1",
                port=0,
                wear_rate=args.wear_rate,
            )
        )
        line = await stack.enter_async_context(OpcuaMachineLine(port=0, tick=1.0))
        broker = await stack.enter_async_context(MiniBroker(port=0))
        await stack.enter_async_context(
            # 2 % malformed payloads: the demo shows them counted and dead-lettered.
            MqttFarm(
                "127.0.0.1",
                broker.port,
                machines=6,
                interval=1.0,
                mqtt_version="3.1.1",
                malformed_rate=0.02,
            )
        )
        # A cycle every 0.5 s from 60 % of each engine's life: the RUL model has its 30-cycle
        # window after 15 s and maintenance alarms follow within a few minutes.
        pool = await stack.enter_async_context(
            CentralPool(port=0, db_path=data_dir / "central-pool.db")
        )
        turbine = await stack.enter_async_context(
            CogenTurbinePlant(port=0, cycle_period=0.5, start_fraction=0.6)
        )
        await stack.enter_async_context(
            GradingLine("127.0.0.1", broker.port, line="grader-1", fruit_rate=2, image_rate=1)
        )
        loaded = demo_config(
            modbus_port=plant.port,
            api_host=args.host,
            api_port=args.port,
            data_dir=data_dir,
            opcua_endpoint=line.endpoint,
            mqtt_port=broker.port,
            turbine_endpoint=turbine.endpoint,
            pool_url=pool.url,
        )
        print(
            f"millrace demo: Modbus plant on 127.0.0.1:{plant.port} (pump unit 1, press unit 2), "
            f"OPC UA machine line on {line.endpoint}, cogeneration turbine on "
            f"{turbine.endpoint}, farm fleet and grading line on MQTT 127.0.0.1:{broker.port}",
            flush=True,
        )
        banner = (
            "millrace demo: live values at /points, device health at /devices, models and "
            "their latency at /models, also /health, /metrics, /docs; Ctrl-C stops"
        )
        from gateway.auth.cli import DEMO_TOKENS, demo_tokens

        tokens = demo_tokens(loaded, data_dir)
        banner += (
            f"\nmillrace demo: send 'Authorization: Bearer <token>'; admin {tokens['admin']}"
            f"\nmillrace demo: viewer {tokens['viewer']} (both kept in {data_dir / DEMO_TOKENS})"
        )
        banner += f"\nmillrace demo: reference central pool on {pool.url} (GET /v1/health)"

        async def demand(_gw: Any) -> None:
            await cooperative_demand(pool.url, lambda line: print(line, flush=True))

        return await _serve(loaded, args.duration, banner, during=demand)


# -- discover -----------------------------------------------------------------------------


def cmd_discover_modbus(args: argparse.Namespace) -> int:
    from drivers.modbus.config import Table
    from drivers.modbus.discover import parse_tcp_url, parse_units

    try:
        host, port = parse_tcp_url(args.url)
        units = parse_units(args.units)
        tables = [Table(t.strip()) for t in args.tables.split(",") if t.strip()]
        guesses = [_parse_guess(g) for g in args.guess]
    except ValueError as exc:
        print(f"millrace discover: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return asyncio.run(_discover_modbus(args, host, port, units, tables, guesses))


def _parse_guess(text: str) -> tuple[Any, int, float, float]:
    from drivers.modbus.config import Table

    parts = text.split(":")
    if len(parts) != 4:
        raise ValueError(f"--guess is TABLE:ADDRESS:LOW:HIGH (got {text!r})")
    try:
        return Table(parts[0]), int(parts[1]), float(parts[2]), float(parts[3])
    except ValueError:
        raise ValueError(f"--guess is TABLE:ADDRESS:LOW:HIGH (got {text!r})") from None


async def _discover_modbus(
    args: argparse.Namespace,
    host: str,
    port: int,
    units: list[int],
    tables: list[Any],
    guesses: list[tuple[Any, int, float, float]],
) -> int:
    from drivers.modbus.discover import ModbusScanner, consistent_candidates

    def progress(msg: str) -> None:
        print(f"  {msg}", file=sys.stderr, flush=True)

    found = 0
    async with ModbusScanner(
        host, port, timeout=args.timeout, max_address=args.max_address, progress=progress
    ) as scanner:
        for i, unit in enumerate(units, 1):
            print(f"[{i}/{len(units)}] unit {unit}…", file=sys.stderr, flush=True)
            if not await scanner.alive(unit):
                continue
            found += 1
            report = await scanner.readable(unit, tables)
            print(f"unit {unit}: answers ({report.requests} requests)")
            for table, runs in report.ranges.items():
                shown = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in runs) or "none"
                print(f"  {table:<17} {shown}")
            chosen = {}
            for table, address, low, high in guesses:
                try:
                    samples = []
                    for k in range(GUESS_SAMPLES):
                        if k:
                            await asyncio.sleep(GUESS_INTERVAL)
                        samples.append(await scanner.read_pair(unit, table, address))
                except ValueError as exc:
                    print(f"  guess {table} {address}: {exc}")
                    continue
                regs = samples[-1]
                cands = consistent_candidates(samples, low, high)
                if not cands:
                    print(f"  guess {table} {address} {regs}: nothing lands in {low}..{high}")
                    continue
                best = cands[0]
                chosen[(table, address)] = best
                others = ", ".join(f"{c.data_type} {c.order}={c.value:.6g}" for c in cands[1:4])
                print(
                    f"  guess {table} {address} {regs}: {best.data_type} {best.order} = "
                    f"{best.value:.6g}" + (f"  (also: {others})" if others else "")
                )
            if args.out:
                _write_profile(Path(args.out), unit, report, chosen)
    print(f"{found} of {len(units)} unit ids answered on tcp://{host}:{port}")
    return EXIT_OK if found else EXIT_FAILURES


def _write_profile(out: Path, unit: int, report: Any, chosen: dict[Any, Any]) -> None:
    import yaml

    from drivers.modbus.discover import starting_profile

    out.mkdir(parents=True, exist_ok=True)
    name = f"discovered-unit-{unit}"
    path = out / f"{name}.yaml"
    profile = starting_profile(name, report, chosen)
    path.write_text(yaml.safe_dump(profile, sort_keys=False), encoding="utf-8")
    print(f"  wrote {path}")


def cmd_discover_opcua(args: argparse.Namespace) -> int:
    from drivers.opcua.discover import discover_opcua, profile_yaml

    password = os.environ.get(args.password_env) if args.password_env else None
    print(f"browsing {args.url} (depth {args.depth})…", file=sys.stderr, flush=True)
    try:
        profile = asyncio.run(
            discover_opcua(
                args.url,
                depth=args.depth,
                include=args.include,
                exclude=args.exclude,
                max_nodes=args.max_nodes,
                name=args.name,
                security_policy=args.security_policy,
                security_mode=args.security_mode,
                certificate=args.certificate,
                private_key=args.private_key,
                application_uri=args.application_uri,
                server_certificate=args.server_certificate,
                username=args.username,
                password=password,
                timeout=args.timeout,
            )
        )
    except (MillraceError, OSError, TimeoutError, ValueError) as exc:
        print(f"millrace discover: {args.url}: {exc}", file=sys.stderr)
        return EXIT_FAILURES
    text = profile_yaml(profile)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out} ({len(profile.get('points', []))} points)")
    else:
        print(text)
    return EXIT_OK if profile.get("points") else EXIT_FAILURES


def cmd_certs(args: argparse.Namespace) -> int:
    import socket as _socket

    from drivers.opcua.certs import create_client_certificate

    for path in (args.cert, args.key):
        if Path(path).exists() and not args.force:
            print(f"millrace certs: {path} exists (use --force to replace it)", file=sys.stderr)
            return EXIT_FAILURES
    cert, key = create_client_certificate(
        args.cert,
        args.key,
        application_uri=args.application_uri,
        hostname=args.hostname or _socket.gethostname(),
        days=args.days,
    )
    from drivers.opcua.certs import read_certificate

    print(f"certificate {cert} (thumbprint {read_certificate(cert).thumbprint})")
    print(f"private key {key} (keep it readable by the gateway only)")
    print("copy the certificate, never the key, to the server's trusted list")
    print(
        f"use in the device config: certificate: {cert}, private_key: {key}, "
        f"application_uri: {args.application_uri}"
    )
    return EXIT_OK


# -- platform ------------------------------------------------------------------------------


def _platform_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--platform",
        default=None,
        help="hardware profile (pi4, pi5, jetson-orin-nano, generic-x86_64, generic-arm64); "
        "default: MILLRACE_PLATFORM or detected",
    )


def cmd_platform(args: argparse.Namespace) -> int:
    if args.list:
        for p in platforms.load_profiles(platforms.find_platform_dir()).values():
            print(f"{p.name:<18} {p.description}")
        return EXIT_OK
    det = platforms.resolve(args.platform)
    if args.systemd_dropin:
        print(platforms.systemd_dropin(det.profile), end="")
        return EXIT_OK
    print("\n".join(platforms.describe(det)))
    return EXIT_OK


# -- check ---------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    loaded, _ = load_box(args.config, args.platform)
    setup_logging("warning", "text", loaded.secret_values)
    return asyncio.run(_check(loaded))


async def _check(loaded: LoadedConfig) -> int:
    from gateway.check import commissioning_report

    text, all_ok = await commissioning_report(loaded)
    print(text)
    return EXIT_OK if all_ok else EXIT_FAILURES


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
