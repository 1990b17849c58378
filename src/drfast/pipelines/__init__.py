"""What each CLI command runs end to end (like Tevatron's driver/): ADORE, STAR, evaluation, pairwise
errors, mining, and the demo. Everything below this layer works without files or a CLI."""
from drfast.pipelines.adore import run_adore
from drfast.pipelines.errors import run_errors
from drfast.pipelines.evaluate import evaluate_model
from drfast.pipelines.mine import mine_split
from drfast.pipelines.star import run_star

__all__ = ["run_adore", "run_star", "run_errors", "evaluate_model", "mine_split"]
