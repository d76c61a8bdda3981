import sys

import raypriv

# Audit a user's own synthesizer (any program) next to training on the real data.
result = raypriv.audit(
    {
        "paradigms": ["real", "external"],
        "paradigm_options": {
            "external": {
                "command": [sys.executable, "examples/external-command/noisy_copies.py",
                            "{private}", "{output}", "{seed}", "{model_id}"],
            }
        },
    },
    out_dir="runs/notebook", n_models=8, audit__n_audit=40, train__epochs=10,
    use_ray=False,  # train in this process; drop it to run on Ray
)
table = result.metrics.query("attack == 'lira_online'").pivot(index="paradigm", columns="metric", values="value")
print(table[["auc", "tpr@1%fpr", "eps_lower_bound"]].round(3))
print(result.models.groupby("paradigm").test_acc.mean().round(3))

again = raypriv.load_run("runs/notebook")  # the same result, read back from the run directory
scores = again.scores()  # per (model, audit sample) attack scores, read now
again.report("runs/notebook/report")  # report.html and report.md
