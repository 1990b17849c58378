"""Trainers on one core (optimisation, checkpoints, resume, hooks): ADORE, STAR and the baselines,
and their losses."""
from drfast.train.adore import AdoreConfig, AdoreTrainer, adore_batch_loss
from drfast.train.core import TrainConfig, TrainingRun
from drfast.train.losses import adore_loss, ranknet_loss
from drfast.train.star import StarConfig, StarTrainer, star_batch_loss

__all__ = ["TrainConfig", "TrainingRun", "AdoreConfig", "AdoreTrainer", "adore_batch_loss", "StarConfig",
           "StarTrainer", "star_batch_loss", "adore_loss", "ranknet_loss"]
