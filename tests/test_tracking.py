from mlflow.tracking import MlflowClient

from sskd_ray import tracking


def test_parent_and_child_runs_in_sqlite(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.resolve_tracking_uri("", tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    with tracking.start_run(uri, "exp", "pipeline", tags={"sskd.run_dir": str(tmp_path)},
                            run_dir=tmp_path) as parent:
        tracking.log_params(uri, parent, {"loss.temperature": 0.1, "a.b": "x" * 10000})
        with tracking.start_run(uri, "exp", "distill", parent_id=parent) as child:
            tracking.log_metrics(uri, child, {"mask_AP": 12.5, "flag": True}, step=3)
            (tmp_path / "report.md").write_text("# hi")
            tracking.log_artifacts(uri, child, [tmp_path / "report.md"])
    client = MlflowClient(uri)
    assert client.get_run(parent).data.params["loss.temperature"] == "0.1"
    assert len(client.get_run(parent).data.params["a.b"]) == tracking.MAX_PARAM_LENGTH
    child_run = client.get_run(child)
    assert child_run.data.tags["mlflow.parentRunId"] == parent
    assert child_run.data.metrics == {"mask_AP": 12.5}
    assert [a.path for a in client.list_artifacts(child)] == ["report.md"]
    assert tracking.find_run(uri, "exp", {"sskd.run_dir": str(tmp_path)}) == parent
    assert tracking.find_run(uri, "exp", {"sskd.run_dir": "elsewhere"}) is None


def test_logging_to_one_run_dir_does_not_redirect_the_next(tmp_path, monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; a second run dir must still get its own db."""
    from sskd_ray import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = tracking.resolve_tracking_uri("", tmp_path / "a")
    with tracking.start_run(first, "exp", "one", run_dir=tmp_path / "a"):
        pass
    assert tracking.resolve_tracking_uri("", tmp_path / "b") == f"sqlite:///{(tmp_path / 'b').resolve() / 'mlflow.db'}"


def test_redaction_by_hand():
    from sskd_ray.redaction import redact, redact_uri

    assert redact_uri("http://alice:s3cret@127.0.0.1:5055") == "http://***@127.0.0.1:5055"
    assert redact_uri("s3://bucket/pool?region=eu-west-1&access_key=AKIA1&secret_key=abc") == \
        "s3://bucket/pool?region=eu-west-1&access_key=***&secret_key=***"
    assert redact_uri("https://h/o.png?X-Amz-Credential=c&X-Amz-Signature=d&X-Amz-Expires=60#top") == \
        "https://h/o.png?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=60#top"
    assert redact_uri("https://acct.blob.core.windows.net/c/x.jpg?sv=2022&sig=zz%3D&token=t&Password=p") == \
        "https://acct.blob.core.windows.net/c/x.jpg?sv=2022&sig=***&token=***&Password=***"
    assert redact_uri("sqlite:////tmp/run/mlflow.db") == "sqlite:////tmp/run/mlflow.db"  # nothing to hide
    assert redact_uri("gs://bucket/a@b.png") == "gs://bucket/a@b.png"  # an @ in the path is not userinfo
    text = "connect postgresql://u:pw@db:5432/mlflow and s3://k@b/p then /local/path?token=1"
    assert redact(text) == "connect postgresql://***@db:5432/mlflow and s3://***@b/p then /local/path?token=1"
    nested = {"tracking.uri": "http://a:b@h", "list": ["s3://b/x?sig=1", 3], "tracking.token": "tok", "key": "/p.png",
              "n": 2, "none": None}
    assert redact(nested) == {"tracking.uri": "http://***@h", "list": ["s3://b/x?sig=***", 3], "tracking.token": "***",
                              "key": "/p.png", "n": 2, "none": None}


def test_params_tags_and_saved_config_are_redacted(tmp_path, monkeypatch):
    import yaml

    from sskd_ray.config import Config, flatten_config, load_config, save_config

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.resolve_tracking_uri("", tmp_path)
    secret_images = "s3://bucket/pool?access_key=AK&secret_key=s3cret"
    cfg = load_config(None, ["tracking.uri=http://alice:s3cret@127.0.0.1:1", f"data.train_images={secret_images}"])
    with tracking.start_run(uri, "exp", "run http://bob:s3cret@h", tags={"where": "s3://u:s3cret@b/r"},
                            run_dir=tmp_path) as run_id:
        tracking.log_params(uri, run_id, {**flatten_config(cfg), "images": secret_images})
    run = MlflowClient(uri).get_run(run_id)
    assert run.data.params["tracking.uri"] == "http://***@127.0.0.1:1"
    assert run.data.params["images"] == "s3://bucket/pool?access_key=***&secret_key=***"
    assert run.data.tags["where"] == "s3://***@b/r" and run.data.tags["mlflow.runName"] == "run http://***@h"
    assert tracking.find_run(uri, "exp", {"where": "s3://u:s3cret@b/r"}) == run_id  # found by its redacted tag
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "s3cret" not in text and yaml.safe_load(text)["tracking"]["uri"] == "http://***@127.0.0.1:1"
    assert Config().tracking.uri == ""
    assert "s3cret" not in (tmp_path / "mlflow.db").read_bytes().decode("latin-1")
