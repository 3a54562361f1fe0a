"""Per-epoch shuffled training batches that a resumed run can fast-forward to the same position."""
from torch.utils.data import BatchSampler, DistributedSampler, Sampler


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of indices; the order of an epoch depends only on (seed, epoch, rank, world_size).

    Shuffling and sharding are torch's DistributedSampler (permutation seeded with seed + epoch), so the order
    never touches the global RNG. `set_epoch(epoch, skip_batches)` skips the batches a checkpoint already consumed.
    """

    def __init__(
        self, num_samples: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
        split: str = "training", fit_batch: bool = False,
    ):
        """`split` names the samples in errors; `fit_batch`: batches of at most the samples per process, where
        `batch_size` would leave no batch (every batch is full, so a larger one would drop every sample)."""
        self.sampler = DistributedSampler(
            range(num_samples), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.batch_size = max(min(batch_size, len(self.sampler)), 1) if fit_batch else batch_size
        self.skip_batches = 0
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"train.batch_size={batch_size} is larger than the {len(self.sampler)} {split} samples per process "
                f"({num_samples} {split} samples over {world_size} process(es)). Lower train.batch_size or add "
                f"episodes."
            )

    @property
    def batches_per_epoch(self) -> int:
        return len(self.sampler) // self.batch_size

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.skip_batches = skip_batches

    def __iter__(self):
        for i, batch in enumerate(BatchSampler(self.sampler, self.batch_size, drop_last=True)):
            if i >= self.skip_batches:
                yield batch

    def __len__(self) -> int:
        return max(self.batches_per_epoch - self.skip_batches, 0)
