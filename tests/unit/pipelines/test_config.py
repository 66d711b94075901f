import textwrap

import pytest

import tokenloom as tl
from tests.helpers import write_captions
from tokenloom.pipelines.cli import main
from tokenloom.pipelines.config import pipeline_from_config

YAML = """
name: yaml-captions
executor: local
imports: [tests.helpers]
source:
  type: io/read_parquet
  path: {src}
nodes:
  chars:
    type: test/count_chars
    inputs: [source]
    column: caption
  upper:
    type: test/upper
    inputs: source
  summary:
    type: test/summarise
    inputs: [chars, upper]
sink:
  type: io/write_parquet
  input: summary
  path: {out}
  batch_size: 8
"""


@pytest.fixture()
def config(tmp_path):
    write_captions(str(tmp_path / "in"))
    path = tmp_path / "pipeline.yaml"
    path.write_text(YAML.format(src=tmp_path / "in", out=tmp_path / "out"))
    return path


def test_yaml_pipeline_with_override_matches_python(config, tmp_path):
    p = pipeline_from_config(config, [f"sink.path={tmp_path / 'out2'}", "nodes.chars.batch_size=4"],
                             allow_modules=["tests.helpers"])
    assert p.node("chars").batch_size == 4
    report = p.run(executor="local", progress=False)
    assert report.rows_written == 30 and report.sinks["sink"].path == str(tmp_path / "out2")
    rows = tl.read_output(str(tmp_path / "out2")).sort_by("row_id")
    assert rows.column("summary")[0].as_py() == "CAPTION 0 |10"


def test_cli_run_and_describe(config, tmp_path, capsys):
    assert main(["describe", str(config), "--allow-module", "tests.helpers"]) == 0
    assert "chars" in capsys.readouterr().out
    code = main(["run", str(config), f"sink.path={tmp_path / 'cli-out'}", "--allow-module", "tests.helpers",
                 "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "rows in 30 = written 30 + errors 0 [ok]" in out
    assert (tmp_path / "cli-out" / "_report.json").exists()


def test_yaml_never_imports_what_was_not_allowed(config):
    with pytest.raises(PermissionError, match="--allow-module tests.helpers"):
        pipeline_from_config(config)


def test_yaml_errors_name_node_and_field(tmp_path):
    write_captions(str(tmp_path / "in"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent(f"""
        source: {{type: io/read_parquet, path: {tmp_path / 'in'}}}
        nodes:
          a: {{type: io/read_parquett, inputs: [source]}}
          b: {{type: io/write_parquet, inputs: [source], pathh: x}}
        sink: {{type: io/write_parquet, input: source, path: {tmp_path / 'o'}}}
    """))
    with pytest.raises(tl.PipelineError) as info:
        pipeline_from_config(bad)
    text = str(info.value)
    assert "node 'a': field 'type': unknown nodes key 'io/read_parquett'. Did you mean 'io/read_parquet'?" in text
    assert "node 'b': WriteParquet has no field 'pathh' (did you mean 'path'?)" in text
    assert "node 'b': field 'path' of WriteParquet is required" in text


def test_unknown_top_level_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sourcez: {}\n")
    with pytest.raises(ValueError, match="unknown top-level key"):
        pipeline_from_config(bad)
