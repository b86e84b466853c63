"""rfa: make pre-trained transformers forget chosen training data (Residual Feature Alignment).

The API follows the `rfa` command and its run configuration::

    import rfa

    config = rfa.RunConfig.demo(forget="class:Coat", runs_dir="runs")
    rfa.train(config)             # M0  -> runs/demo/original/
    rfa.retrain(config)           # M*  -> runs/demo/retrain/
    result = rfa.unlearn(config)  # RFA -> runs/demo/rfa/{adapter,merged}/
    report = rfa.evaluate(config) # runs/demo/report/; report.json's content as a dict
    rfa.verify(result["dir"] + "/receipt.json")   # the receipt, checked against the files

    # The next deletion request, after the first one; the chain of requests as a list of dicts.
    nxt = config.replace(name="request2", forget="ids:4,8", after=config.run_dir)
    rfa.unlearn(nxt)
    rfa.ledger(nxt.run_dir)

Keywords name a configuration field by its dotted key with `__` for the dot
(`unlearn__lr=1e-3`), or by its own name where only one section has it (`forget`, `dataset`).
Ctrl-C stops a phase before its next step (KeyboardInterrupt); what it wrote before stays
intact. Errors are FileNotFoundError (a missing file), ValueError (a bad configuration or data),
RuntimeError (a failed phase), each with rfa's whole message.
"""

from ._native import (
    METHODS,
    RunConfig,
    __version__,
    evaluate,
    export,
    keygen,
    ledger,
    retrain,
    revert,
    train,
    unlearn,
    verify,
)

__all__ = [
    "METHODS",
    "RunConfig",
    "__version__",
    "evaluate",
    "export",
    "keygen",
    "ledger",
    "retrain",
    "revert",
    "train",
    "unlearn",
    "verify",
]
