"""Our MBXP checker: runs model answers in cpp, python, php, javascript, ruby and typescript against
the MBXP tests and reaches the reference checker's (mxeval's) verdicts, with stricter isolation.

Files by role: programs (answer -> program text), toolchains (what must be installed), probes (a
one-line program per language before scoring), sandbox and confine (running one untrusted command),
python_child (the in-process python check), languages (compile/run/verdict per language), runner
(parallel checks).
"""

from harness.evaluation.mbxp.probes import broken_toolchains
from harness.evaluation.mbxp.programs import SCORED_LANGUAGES, MbxpTask, MbxpVerdict, parse_mbxp_id
from harness.evaluation.mbxp.runner import run_mbxp
from harness.evaluation.mbxp.toolchains import missing_toolchains

__all__ = ["SCORED_LANGUAGES", "MbxpTask", "MbxpVerdict", "broken_toolchains", "missing_toolchains", "parse_mbxp_id",
           "run_mbxp"]
