"""LieRA's registration with PEFT touches PEFT internals (three mapping tables keyed by the string "LIERA"):
these tests fail loudly the day PEFT moves them, and tell when its public route starts to work."""

from __future__ import annotations

import json

import peft
import pytest
from peft import PeftConfig, mapping
from peft.utils import PeftType, register_peft_method

from liera_vision.errors import LieraWarning
from liera_vision.peft import LOAD_NOTE, LieRAConfig, LieRAModel, register_with_peft


def test_liera_is_in_the_tables_peft_reads():
    assert mapping.PEFT_TYPE_TO_CONFIG_MAPPING["LIERA"] is LieRAConfig
    assert mapping.PEFT_TYPE_TO_TUNER_MAPPING["LIERA"] is LieRAModel
    assert mapping.PEFT_TYPE_TO_PREFIX_MAPPING["LIERA"] == "lora_"
    # the very dicts PeftModel / get_peft_model / save_and_load look methods up in (imported by name there)
    from peft import mapping_func, peft_model
    from peft.utils import save_and_load

    assert peft_model.PEFT_TYPE_TO_CONFIG_MAPPING is mapping.PEFT_TYPE_TO_CONFIG_MAPPING
    assert peft_model.PEFT_TYPE_TO_TUNER_MAPPING is mapping.PEFT_TYPE_TO_TUNER_MAPPING
    assert mapping_func.PEFT_TYPE_TO_PREFIX_MAPPING is mapping.PEFT_TYPE_TO_PREFIX_MAPPING
    assert save_and_load.PEFT_TYPE_TO_TUNER_MAPPING is mapping.PEFT_TYPE_TO_TUNER_MAPPING


def test_the_installed_peft_is_the_tested_minor():
    """The peft extra is bounded to peft>=0.21,<0.22; a newer PEFT needs this registration re-checked first."""
    assert peft.__version__.startswith("0.21."), peft.__version__


def test_peft_public_registration_still_rejects_custom_names():
    """Canary: when this fails, PEFT's register_peft_method accepts names outside its enum; switch
    liera_vision/peft/register.py to it (and drop the direct table writes)."""
    assert "LIERA" not in {t.value for t in PeftType}
    with pytest.raises(ValueError, match=r"Unknown PEFT type LIERA, please add an entry to"):
        register_peft_method(name="liera", config_cls=LieRAConfig, model_cls=LieRAModel, prefix="lora_")


def test_registration_fails_loudly_when_peft_moves_its_tables(monkeypatch):
    monkeypatch.delattr(mapping, "PEFT_TYPE_TO_TUNER_MAPPING")
    with pytest.raises(ImportError, match=r"peft 0\.21\.\d+ has no peft.mapping.PEFT_TYPE_TO_TUNER_MAPPING: "
                                          r"liera_vision.peft registers LieRA there"):
        register_with_peft()


def test_an_untested_peft_version_is_warned_about(monkeypatch):
    monkeypatch.setattr(peft, "__version__", "0.22.0")
    with pytest.warns(LieraWarning, match=r"tested with peft 0.21, this is peft 0.22.0"):
        register_with_peft()
    assert mapping.PEFT_TYPE_TO_CONFIG_MAPPING["LIERA"] is LieRAConfig  # registered all the same (idempotent)


def test_saved_config_tells_how_to_load_it_and_peft_reads_it_back(tmp_path):
    config = LieRAConfig(r=4, alpha="auto-kind", composition="exp", modules_to_save=["head"])
    config.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "adapter_config.json").read_text())
    assert data["peft_type"] == "LIERA" and data["note"] == LOAD_NOTE
    assert "import liera_vision.peft" in data["note"] and "KeyError: 'LIERA'" in data["note"]
    assert data["liera_vision_version"] == "0.1.0" and data["alpha"] == "auto-kind"
    loaded = PeftConfig.from_pretrained(tmp_path)  # PEFT's generic entry point dispatches on peft_type
    assert type(loaded) is LieRAConfig and loaded.to_dict() == config.to_dict()
    data["note"] = "edited"  # the note is instructions, not data: always today's text
    (tmp_path / "adapter_config.json").write_text(json.dumps(data))
    assert PeftConfig.from_pretrained(tmp_path).note == LOAD_NOTE


def test_the_bridge_depends_on_core_only():
    """liera_vision.peft bridges core and PEFT; the math and the training stacks stay out of it."""
    from tests.test_layout import imports_of

    ours = {name for name in imports_of("peft") if name.startswith("liera_vision")}
    assert ours and all(name == "liera_vision" or name.split(".")[1] in {"core", "errors", "fileio", "peft"}
                        for name in ours), sorted(ours)
