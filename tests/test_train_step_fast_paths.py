"""The training step's GPU paths, checked on CPU: no read-back from the device between log steps, a bf16 step close
to the fp32 step, and compiled passes with the eager losses (or a fallback that says why)."""
import contextlib
import io
import unittest
from unittest import mock

import pytest
import torch

from roboimi.vla.training.trainer import Trainer
from tests.tiny_config import TinyDatasetTestCase, compose_tiny

AGENTS = ("resnet_imf_attnres", "resnet_transformer")
GROUP_NORM = ["agent.vision_backbone.use_group_norm=true"]
# Tensor methods that copy a value to the host, which on CUDA waits for every queued kernel.
READ_BACKS = ("item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__")


class ReadBackCounter:
    """Counts host read-backs of tensors while active, except of the tensors in `host_side` (kept on the host by
    design, like the optimizer's step counters)."""

    def __init__(self):
        self.calls: list[str] = []
        self.host_side: set[int] = set()

    @contextlib.contextmanager
    def active(self):
        with contextlib.ExitStack() as stack:
            for name in READ_BACKS:
                stack.enter_context(mock.patch.object(torch.Tensor, name, self._counting(name, getattr(torch.Tensor, name))))
            stack.enter_context(mock.patch.object(torch.Tensor, "__getitem__", self._counting_masks(torch.Tensor.__getitem__)))
            yield self

    def _counting(self, name, original):
        def method(tensor, *args, **kwargs):
            if id(tensor) not in self.host_side:
                self.calls.append(name)
            return original(tensor, *args, **kwargs)
        return method

    def _counting_masks(self, original):
        def getitem(tensor, index):
            if isinstance(index, torch.Tensor) and index.dtype == torch.bool:
                self.calls.append("boolean mask indexing")  # the result's size depends on the values
            return original(tensor, index)
        return getitem


class TrainStepTest(TinyDatasetTestCase):
    def trainer(self, agent: str, name: str, extra=()) -> Trainer:
        cfg = compose_tiny(agent, self.data_dir, ["train.batch_size=4", *extra])
        trainer = Trainer(cfg, self.data_dir.parent / name)
        self.addCleanup(trainer.close)
        return trainer

    def test_steps_read_nothing_back_from_the_device_between_log_steps(self):
        for agent in AGENTS:
            with self.subTest(agent=agent):
                trainer = self.trainer(agent, f"syncs_{agent}")
                batches = [batch for batch, _ in zip(trainer.train_loader, range(3))]
                counter = ReadBackCounter()
                trainer.train_step(batches[0])  # creates the optimizer state
                counter.host_side = {id(state["step"]) for state in trainer.optimizer.state.values()}
                with counter.active():
                    for batch in batches[1:]:
                        trainer.train_step(batch)
                self.assertEqual(counter.calls, [])
                # The log step reads the interval's metrics back, once.
                with counter.active():
                    loss, grad_norm = trainer.metrics.read_and_reset()
                self.assertEqual(counter.calls, ["tolist"])
                self.assertGreater(loss, 0.0)
                self.assertGreater(grad_norm, 0.0)

    def test_the_counter_sees_a_read_back(self):
        counter = ReadBackCounter()
        with counter.active():
            value = torch.ones(3)
            if value.sum() > 0:
                value[value > 0].nonzero()
        self.assertEqual(counter.calls, ["__bool__", "boolean mask indexing", "nonzero"])

    def test_a_bf16_step_gives_the_loss_and_gradients_of_the_fp32_step(self):
        for agent in AGENTS:
            with self.subTest(agent=agent):
                trainer = self.trainer(agent, f"bf16_{agent}", GROUP_NORM)
                batch = next(iter(trainer.train_loader))
                results = {}
                for precision in ("fp32", "bf16"):
                    trainer.cfg.train.precision = precision
                    torch.manual_seed(0)
                    loss = trainer.loss_and_gradients(batch)
                    grads = torch.cat([p.grad.reshape(-1) for p in trainer.trainable_params if p.grad is not None])
                    results[precision] = (loss.detach(), grads)
                (loss32, grads32), (loss16, grads16) = results["fp32"], results["bf16"]
                self.assertEqual(loss16.dtype, torch.float32)  # reduced in fp32
                self.assertNotEqual(loss16.item(), loss32.item())  # autocast did run in bf16
                torch.testing.assert_close(loss16, loss32, rtol=0.05, atol=1e-4)
                self.assertLess(((grads16 - grads32).norm() / grads32.norm()).item(), 0.1)
                self.assertGreater(torch.nn.functional.cosine_similarity(grads16, grads32, dim=0).item(), 0.99)
                self.assertTrue(all(p.dtype == torch.float32 for p in trainer.agent.parameters()))

    def test_precision_is_validated_before_any_work(self):
        with self.assertRaisesRegex(ValueError, r"train\.precision='fp16' is invalid: one of \['fp32', 'bf16'\]"):
            Trainer(compose_tiny("resnet_transformer", self.data_dir, ["train.precision=fp16"]), self.data_dir.parent / "fp16")
        self.assertFalse((self.data_dir.parent / "fp16").exists())

    def test_a_failing_compiler_falls_back_with_a_message(self):
        def broken_backend(graph_module, example_inputs):
            raise RuntimeError("no C++ compiler on this machine")

        real_compile = torch.compile
        with mock.patch.object(torch, "compile", lambda module: real_compile(module, backend=broken_backend)):
            trainer = self.trainer("resnet_imf_attnres", "broken_compile", ["train.compile=true", *GROUP_NORM])
        self.assertTrue(trainer.agent.compiled_training_passes)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            trainer.fit()
        self.assertIn("train.compile=true: torch.compile failed (BackendCompilerFailed", out.getvalue())
        self.assertIn("no C++ compiler on this machine", out.getvalue())
        self.assertIn("training continues without compiling", out.getvalue())
        self.assertEqual(trainer.global_step, 4)
        self.assertFalse(trainer.agent.compiled_training_passes)

    @pytest.mark.slow
    @mock.patch.object(torch._inductor.config, "fallback_random", True)  # dropout masks drawn as eager draws them
    def test_compiled_steps_give_the_eager_losses(self):
        for agent in AGENTS:
            with self.subTest(agent=agent):
                losses = {}
                for compiled in (False, True):
                    trainer = self.trainer(agent, f"compile_{agent}_{compiled}", [f"train.compile={str(compiled).lower()}", *GROUP_NORM])
                    torch.manual_seed(0)
                    losses[compiled] = [trainer.train_step(batch)[0].item() for batch, _ in zip(trainer.train_loader, range(3))]
                    self.assertEqual(trainer.agent.compiled_training_passes, compiled)
                torch.testing.assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]), rtol=1e-4, atol=1e-6)


if __name__ == "__main__":
    unittest.main()
