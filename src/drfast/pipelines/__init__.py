"""What each CLI command runs end to end (like Tevatron's driver/): ADORE, STAR, evaluation, pairwise
errors, mining, and the demo, each taking run specs (pipelines.specs) for the settings they share.
Everything below this layer works without files or a CLI."""
from drfast.pipelines.adore import run_adore
from drfast.pipelines.errors import run_errors
from drfast.pipelines.evaluate import evaluate_model
from drfast.pipelines.mine import mine_split
from drfast.pipelines.specs import (CorpusSpec, EncoderSpec, IndexSpec, OutputSpec, PlacementSpec, SearchSpec,
                                    TrainSpec)
from drfast.pipelines.star import run_star

__all__ = ["run_adore", "run_star", "run_errors", "evaluate_model", "mine_split", "CorpusSpec", "EncoderSpec",
           "IndexSpec", "SearchSpec", "TrainSpec", "PlacementSpec", "OutputSpec"]
