"""The SGLang command line, flag by flag, against SGLang's own argument table.

sglang-args-0.5.23.tsv is SGLang 0.5.23's real `launch_server` parser dumped by
scripts/sglang_args_dump.py; pinned.ARGS is what the launcher relies on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.sglang import pinned
from engine.sglang.args import (EVENTS_TOPIC, L3Config, LaunchConfigError, SGLangOptions, build_command, check_extras,
                                dp_size_of)

TABLE = Path(__file__).with_name(pinned.ARGS_TABLE)


def sglang_table() -> dict[str, tuple[str, tuple[str, ...]]]:
    """option string -> (switch|value, choices), every alias included."""
    lines = TABLE.read_text().splitlines()
    assert lines[0] == f"# sglang {pinned.SGLANG_VERSION}", "the table and the pinned version disagree"
    table = {}
    for line in lines[1:]:
        names, kind, choices = line.split("\t")
        for name in names.split(","):
            table[name] = (kind, tuple(c for c in choices.split(",") if c))
    return table


def flags_and_values(cmd: list[str]) -> list[tuple[str, str | None]]:
    """The launch_server arguments of `cmd` as (flag, value or None), using the table to know which take a value."""
    table = sglang_table()
    assert cmd[1:3] == ["-m", "sglang.launch_server"]
    out, args, i = [], cmd[3:], 0
    while i < len(args):
        flag = args[i]
        assert flag in table, f"{flag} is not a SGLang {pinned.SGLANG_VERSION} argument"
        if table[flag][0] == "switch":
            out.append((flag, None))
            i += 1
        else:
            out.append((flag, args[i + 1]))
            i += 2
    return out


def test_pinned_flags_exist_in_sglang_with_the_same_arity():
    table = sglang_table()
    for flag, takes_value in pinned.ARGS.items():
        assert flag in table, flag
        assert table[flag][0] == ("value" if takes_value else "switch"), flag
    assert set(pinned.HICACHE_STORAGE_BACKENDS) == set(table["--hicache-storage-backend"][1])
    assert set(pinned.HICACHE_WRITE_POLICIES) == set(table["--hicache-write-policy"][1])
    assert set(pinned.DTYPES) == set(table["--dtype"][1])


def test_default_command_flag_by_flag():
    opts = SGLangOptions(model_path="meta-llama/Llama-3.1-8B-Instruct", port=31000, events_port=40000,
                         replay_port=40001, python="/venv/bin/python")
    cmd = build_command(opts)
    assert cmd[0] == "/venv/bin/python"
    args = dict(flags_and_values(cmd))
    assert len(args) == len(flags_and_values(cmd)), "a flag given twice"
    assert set(args) <= set(pinned.ARGS)
    assert args.pop("--model-path") == "meta-llama/Llama-3.1-8B-Instruct"
    assert args.pop("--host") == "127.0.0.1"
    assert args.pop("--port") == "31000"
    assert args.pop("--page-size") == "16"
    events = json.loads(args.pop("--kv-events-config"))
    assert events == {"publisher": "zmq", "endpoint": "tcp://127.0.0.1:40000", "bind": True,
                      "replay_endpoint": "tcp://127.0.0.1:40001", "topic": EVENTS_TOPIC}
    assert args.pop("--enable-cache-report") is None
    assert args.pop("--enable-metrics") is None
    assert args.pop("--log-level") == "info"
    assert args.pop("--enable-hierarchical-cache") is None
    assert args.pop("--enable-priority-scheduling") is None
    assert args.pop("--default-priority-value") == "0"
    assert args == {}, f"unexpected flags {args}"


def test_kv_events_config_fields_are_sglang_kveventsconfig_fields():
    # KVEventsConfig in kv_events.py 0.5.23: publisher, endpoint, bind, replay_endpoint, buffer_steps, hwm,
    # max_queue_size, topic, format.
    known = {"publisher", "endpoint", "bind", "replay_endpoint", "buffer_steps", "hwm", "max_queue_size", "topic",
             "format"}
    assert set(json.loads(SGLangOptions(model_path="m").kv_events_config())) <= known


def test_every_option_maps_to_its_flag():
    opts = SGLangOptions(model_path="/models/m", host="0.0.0.0", port=30001, served_model_name="m1",
                         context_length=8192, dtype="bfloat16", disable_radix_cache=True, hicache_size_gb=64,
                         hicache_write_policy="write_back", l3=L3Config.parse("file:/shared/kv"),
                         speculative_ngram_tokens=6, extra=("--tp-size", "2", "--mem-fraction-static", "0.8"))
    cmd = build_command(opts)
    args = dict(flags_and_values(cmd))
    assert args["--host"] == "0.0.0.0"
    assert args["--served-model-name"] == "m1"
    assert args["--context-length"] == "8192"
    assert args["--dtype"] == "bfloat16"
    assert "--disable-radix-cache" in args
    assert args["--hicache-size"] == "64"
    assert args["--hicache-write-policy"] == "write_back"
    assert args["--hicache-storage-backend"] == "file"
    assert json.loads(args["--hicache-storage-backend-extra-config"]) == {"file_storage_path": "/shared/kv"}
    assert args["--speculative-algorithm"] == "NGRAM"
    assert args["--speculative-num-draft-tokens"] == "6"
    assert cmd[-4:] == ["--tp-size", "2", "--mem-fraction-static", "0.8"]  # extras last, untouched
    assert args["--tp-size"] == "2"  # ...and a real SGLang flag (flags_and_values checked it)


def test_switches_off_leave_their_flags_out():
    cmd = build_command(SGLangOptions(model_path="m", hicache=False, priority_scheduling=False))
    args = dict(flags_and_values(cmd))
    for flag in ("--enable-hierarchical-cache", "--hicache-size", "--enable-priority-scheduling",
                 "--default-priority-value", "--speculative-algorithm", "--hicache-storage-backend"):
        assert flag not in args


@pytest.mark.parametrize("extra", [("--page-size", "32"), ("--kv-events-config", "{}"), ("--port=1",),
                                   ("--model", "x"), ("--enable-hicache",)])
def test_extras_may_not_override_owned_flags(extra):
    with pytest.raises(LaunchConfigError, match="set by agentgate"):
        build_command(SGLangOptions(model_path="m", extra=extra))


def test_passthrough_speculative_algorithm_conflicts_with_our_ngram():
    extra = ("--speculative-algorithm", "EAGLE3", "--speculative-draft-model-path", "d", "--speculative-num-steps", "3")
    cmd = build_command(SGLangOptions(model_path="m", extra=extra))  # EAGLE family: passed through
    assert dict(flags_and_values(cmd))["--speculative-algorithm"] == "EAGLE3"
    with pytest.raises(LaunchConfigError):
        build_command(SGLangOptions(model_path="m", speculative_ngram_tokens=4, extra=extra))


def test_unknown_speculative_algorithm_is_warned_about(caplog):
    check_extras(("--speculative-algorithm", "MY_PLUGIN"), owned=set())
    assert "MY_PLUGIN" in caplog.text
    caplog.clear()
    check_extras(("--speculative-algorithm=eagle",), owned=set())
    assert caplog.text == ""


def test_dp_size_from_extras_and_per_rank_endpoints():
    assert dp_size_of(("--tp-size", "2")) == 1
    assert dp_size_of(("--dp-size", "4")) == 4
    assert dp_size_of(("--data-parallel-size=2",)) == 2
    with pytest.raises(LaunchConfigError):
        dp_size_of(("--dp-size", "many"))
    opts = SGLangOptions(model_path="m", events_port=5000, replay_port=5002, dp_size=2)
    assert opts.events_endpoints() == ["tcp://127.0.0.1:5000", "tcp://127.0.0.1:5001"]
    assert opts.replay_endpoints() == ["tcp://127.0.0.1:5002", "tcp://127.0.0.1:5003"]


def test_l3_specs():
    assert L3Config.parse("file:/x/y").store_id == "sglang-file:/x/y"
    mooncake = L3Config.parse('mooncake:{"master_server_address": "h:1"}')
    assert mooncake.backend == "mooncake" and mooncake.extra_config == {"master_server_address": "h:1"}
    assert mooncake.store_id == "sglang-mooncake"
    for bad in ("file", "s3:/bucket", "nixl:{not json"):
        with pytest.raises(LaunchConfigError):
            L3Config.parse(bad)
    with pytest.raises(LaunchConfigError, match="hierarchical"):
        build_command(SGLangOptions(model_path="m", hicache=False, l3=L3Config.parse("file:/x")))


def test_worker_cli_parses_backend_and_extras():
    import argparse

    from engine.sglang.cli import options_from_args
    from engine.worker.main import add_worker_args

    p = argparse.ArgumentParser()
    add_worker_args(p)
    args = p.parse_args(["--backend", "sglang", "--model-path", "Qwen/Qwen2.5-7B-Instruct", "--port", "30005",
                         "--sglang-hicache-size", "32", "--sglang-l3", "file:/mnt/kv", "--sglang-events-port", "41000",
                         "--", "--tp-size", "2", "--dp-size", "2"])
    opts = options_from_args(args)
    assert (opts.model_path, opts.port, opts.hicache_size_gb) == ("Qwen/Qwen2.5-7B-Instruct", 30005, 32)
    assert opts.dp_size == 2
    assert opts.l3 == L3Config("file", {"file_storage_path": "/mnt/kv"})
    assert (opts.events_port, opts.replay_port) == (41000, 41002)
    assert opts.extra == ("--tp-size", "2", "--dp-size", "2")
    assert build_command(opts)[-4:] == ["--tp-size", "2", "--dp-size", "2"]
    with pytest.raises(LaunchConfigError, match="model-path"):
        options_from_args(p.parse_args(["--backend", "sglang"]))


def test_embedded_backend_refuses_extras():
    import argparse

    from engine.worker.main import add_worker_args, run_worker

    p = argparse.ArgumentParser()
    add_worker_args(p)
    assert run_worker(p.parse_args(["--", "--tp-size", "2"])) == 2
