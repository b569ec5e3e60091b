"""The CPU ISA probe: flags from /proc/cpuinfo text, and this machine's answer."""

import platform

from wherevit.base.cpu import CpuIsa, cpu_isa, parse_cpu_flags

ZEN2_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2
"""
SAPPHIRE_RAPIDS = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8 avx_vnni
processor\t: 1
model name\t: ignored second core
flags\t\t: fpu
"""


def _isa(text, tmp_path):
    p = tmp_path / "cpuinfo"
    p.write_text(text)
    return cpu_isa(p)


def test_avx2_only_cpu(tmp_path):
    isa = _isa(ZEN2_AVX2, tmp_path)
    assert isa.model == "AMD EPYC 7B12" and isa.avx2 and isa.fma
    assert not (isa.avx512f or isa.vnni or isa.bf16 or isa.amx_tile)
    assert isa.summary == "AVX2 FMA"


def test_avx512_vnni_bf16_amx_cpu(tmp_path):
    isa = _isa(SAPPHIRE_RAPIDS, tmp_path)
    assert isa.avx512f and isa.avx512_vnni and isa.vnni and isa.avx512_bf16 and isa.bf16 and isa.amx_int8
    assert isa.summary == "AVX-512 FMA VNNI BF16 AMX"
    assert isa.model.startswith("Intel")  # the first processor's record


def test_this_machine_is_sane(tmp_path):
    isa = cpu_isa()
    d = isa.to_dict()
    assert d["arch"] == platform.machine() and isinstance(d["model"], str) and d["summary"]
    assert all(isinstance(d[k], bool) for k in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "vnni", "bf16"))
    if isa.avx512_vnni or isa.avx512_bf16:
        assert isa.avx512f  # the AVX-512 extensions imply the foundation
    if platform.machine() == "x86_64" and isa.source != "unavailable":
        assert isa.avx2 or not isa.avx512f
    assert cpu_isa(tmp_path / "missing").source == "unavailable"


def test_parse_keeps_the_first_processor():
    model, flags = parse_cpu_flags(SAPPHIRE_RAPIDS)
    assert "amx_tile" in flags and model.startswith("Intel")
    assert CpuIsa(model="m", arch="x86_64").summary == "no AVX2"


def test_parse_reads_arm_features():
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes sve\n"
    model, flags = parse_cpu_flags(arm)
    assert model == "" and {"asimd", "sve"} <= flags
