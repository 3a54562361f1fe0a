"""ResNetDiffusionBackbone: spatial-softmax keypoints, shapes, camera order, GroupNorm, freezing, weights, crops,
the small conv trunk."""
import os
import tempfile
import unittest

import torch
import torchvision
from torch import nn

from roboimi.vla.models.backbones.resnet_diffusion import ResNetDiffusionBackbone, SpatialSoftmax
from roboimi.vla.models.backbones.small_cnn import SmallConvTrunk

torch.set_num_threads(1)

CAMS = ("r_vis", "top", "front")


def camera_batch(batch=2, steps=2, size=(16, 16), cams=CAMS, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {cam: torch.rand(batch, steps, 3, *size, generator=generator) for cam in cams}


class SpatialSoftmaxTest(unittest.TestCase):
    def setUp(self):
        # 2 input channels, 3x5 map; keypoint k reads channel k only.
        self.pool = SpatialSoftmax((2, 3, 5), num_kp=2)
        with torch.no_grad():
            self.pool.nets.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            self.pool.nets.bias.zero_()

    def test_grid_is_x_first_over_minus_one_to_one(self):
        grid = self.pool.pos_grid
        self.assertEqual(tuple(grid.shape), (15, 2))
        # position h * W + w holds (x_w, y_h) with x_w = -1 + w / 2 and y_h = -1 + h.
        torch.testing.assert_close(grid[2 * 5 + 1], torch.tensor([-0.5, 1.0]))
        torch.testing.assert_close(grid[0], torch.tensor([-1.0, -1.0]))
        torch.testing.assert_close(grid[14], torch.tensor([1.0, 1.0]))

    def test_peak_gives_its_grid_coordinate(self):
        features = torch.zeros(1, 2, 3, 5)
        features[0, 0, 2, 1] = 100.0  # sharp peak at row 2, column 1
        keypoints = self.pool(features)
        self.assertEqual(tuple(keypoints.shape), (1, 2, 2))
        torch.testing.assert_close(keypoints[0, 0], torch.tensor([-0.5, 1.0]))
        # A flat map has the grid centre as expectation.
        torch.testing.assert_close(keypoints[0, 1], torch.tensor([0.0, 0.0]))

    def test_two_equal_peaks_average(self):
        features = torch.zeros(1, 2, 3, 5)
        features[0, 0, 0, 0] = features[0, 0, 0, 4] = 100.0  # top-left and top-right corners
        torch.testing.assert_close(self.pool(features)[0, 0], torch.tensor([0.0, -1.0]))


class BackboneShapeTest(unittest.TestCase):
    def test_separate_encoders_output_and_attributes(self):
        backbone = ResNetDiffusionBackbone(input_shape=(16, 16)).eval()
        self.assertEqual(backbone.camera_names, CAMS)
        self.assertEqual(backbone.num_cameras, 3)
        self.assertEqual(backbone.output_dim, 64)
        self.assertIsInstance(backbone.rgb_encoder, nn.ModuleList)
        self.assertEqual(len(backbone.rgb_encoder), 3)
        self.assertEqual(tuple(backbone(camera_batch()).shape), (2, 2, 192))

    def test_three_trunks_have_resnet18_size(self):
        backbone = ResNetDiffusionBackbone(input_shape=(16, 16))
        trunk_params = sum(p.numel() for enc in backbone.rgb_encoder for p in enc.backbone.parameters())
        self.assertEqual(trunk_params, 3 * 11_176_512)  # resnet18 without its fc layer

    def test_feature_map_size_sets_the_grid(self):
        # ResNet-18 downsamples by 32 (rounding up): 16 -> 1x1, 96 -> 3x3, 96 cropped to 64 -> 2x2.
        for input_shape, crop, cells in (((16, 16), None, 1), ((96, 96), None, 9), ((96, 96), (64, 64), 4)):
            backbone = ResNetDiffusionBackbone(input_shape=input_shape, crop_shape=crop, camera_names=("top",))
            self.assertEqual(backbone.rgb_encoder[0].pool.pos_grid.shape[0], cells)

    def test_keypoint_count_sets_output_dim(self):
        backbone = ResNetDiffusionBackbone(input_shape=(16, 16), spatial_softmax_num_keypoints=8)
        self.assertEqual(backbone.output_dim, 16)
        self.assertEqual(tuple(backbone.eval()(camera_batch()).shape), (2, 2, 48))

    def test_tiny_images_train_mode(self):
        backbone = ResNetDiffusionBackbone(input_shape=(16, 16)).train()
        out = backbone(camera_batch(batch=2, steps=2))
        self.assertEqual(tuple(out.shape), (2, 2, 192))
        self.assertTrue(torch.isfinite(out).all())

    def test_dry_run_leaves_mode_and_batchnorm_statistics(self):
        backbone = ResNetDiffusionBackbone(input_shape=(16, 16), camera_names=("top",))
        self.assertTrue(backbone.training)
        self.assertTrue(all(m.training for m in backbone.modules()))
        bn = backbone.rgb_encoder[0].backbone[1]
        self.assertIsInstance(bn, nn.BatchNorm2d)
        self.assertEqual(int(bn.num_batches_tracked), 0)

    def test_cameras_concatenated_in_camera_names_order(self):
        # 64x64 gives a 2x2 feature map; at 1x1 the keypoints cannot depend on the image.
        backbone = ResNetDiffusionBackbone(input_shape=(64, 64)).eval()
        images = camera_batch(size=(64, 64))
        changed = dict(images, top=torch.rand(2, 2, 3, 64, 64))
        base, out = backbone(images), backbone(changed)
        torch.testing.assert_close(out[..., :64], base[..., :64])
        torch.testing.assert_close(out[..., 128:], base[..., 128:])
        self.assertFalse(torch.allclose(out[..., 64:128], base[..., 64:128]))

    def test_shared_encoder_equals_per_camera_application(self):
        backbone = ResNetDiffusionBackbone(input_shape=(64, 64), use_separate_rgb_encoder_per_camera=False).eval()
        self.assertNotIsInstance(backbone.rgb_encoder, nn.ModuleList)
        images = camera_batch(size=(64, 64))
        out = backbone(images)
        self.assertEqual(tuple(out.shape), (2, 2, 192))
        for i, cam in enumerate(CAMS):
            expected = backbone.rgb_encoder(images[cam].flatten(0, 1)).view(2, 2, 64)
            torch.testing.assert_close(out[..., 64 * i : 64 * (i + 1)], expected)

    def test_camera_dropout_drops_whole_cameras_in_training_only(self):
        images = camera_batch(batch=64, size=(64, 64))
        # GroupNorm: train and eval mode compute the same features apart from the dropout
        backbone = ResNetDiffusionBackbone(input_shape=(64, 64), use_group_norm=True, camera_dropout=0.5).eval()
        full = backbone(images).view(64, 2, 3, 64)  # (B, T, camera, feature)
        torch.testing.assert_close(backbone(images).view_as(full), full)
        torch.manual_seed(0)
        dropped = backbone.train()(images).view_as(full)
        zero = (dropped == 0).all(dim=-1)  # (B, T, camera)
        # a camera is dropped for all frames of a sample or for none; kept ones are scaled by 1 / (1 - p)
        self.assertTrue(torch.equal(zero[:, 0], zero[:, 1]))
        self.assertTrue(0.3 < zero[:, 0].float().mean() < 0.7)
        kept = ~zero[:, 0]
        torch.testing.assert_close(dropped.permute(0, 2, 1, 3)[kept], 2 * full.permute(0, 2, 1, 3)[kept])
        with self.assertRaisesRegex(ValueError, "camera_dropout=1.0"):
            ResNetDiffusionBackbone(input_shape=(16, 16), camera_dropout=1.0)

    def test_missing_input_shape(self):
        with self.assertRaisesRegex(ValueError, "data.image_shape"):
            ResNetDiffusionBackbone(input_shape=None)


class GroupNormAndFreezeTest(unittest.TestCase):
    def test_group_norm_replaces_every_batchnorm(self):
        backbone = ResNetDiffusionBackbone(input_shape=(16, 16), use_group_norm=True, camera_names=("top",))
        trunk = backbone.rgb_encoder[0].backbone
        self.assertFalse(any(isinstance(m, nn.BatchNorm2d) for m in trunk.modules()))
        norms = [m for m in trunk.modules() if isinstance(m, nn.GroupNorm)]
        self.assertEqual(len(norms), 20)  # resnet18 has 20 BatchNorm2d layers
        self.assertEqual({(m.num_channels, m.num_groups) for m in norms}, {(64, 4), (128, 8), (256, 16), (512, 32)})

    def test_group_norm_with_pretrained_weights_is_rejected(self):
        with self.assertRaisesRegex(ValueError, "use_group_norm"):
            ResNetDiffusionBackbone(input_shape=(16, 16), use_group_norm=True, pretrained_backbone_weights="w.pth")

    def test_frozen_trunk_has_no_grads_and_stays_in_eval(self):
        backbone = ResNetDiffusionBackbone(input_shape=(16, 16), freeze_backbone=True, camera_names=("top",))
        backbone.train()
        encoder = backbone.rgb_encoder[0]
        self.assertFalse(any(p.requires_grad for p in encoder.backbone.parameters()))
        self.assertTrue(all(p.requires_grad for p in encoder.pool.parameters()))
        self.assertTrue(all(p.requires_grad for p in encoder.out.parameters()))
        self.assertFalse(any(m.training for m in encoder.backbone.modules()))
        self.assertTrue(encoder.training and encoder.out.training)

        bn = encoder.backbone[1]
        running_mean = bn.running_mean.clone()
        backbone(camera_batch(cams=("top",))).sum().backward()
        torch.testing.assert_close(bn.running_mean, running_mean)
        self.assertIsNotNone(encoder.out.weight.grad)
        self.assertIsNone(encoder.backbone[0].weight.grad)


class PretrainedWeightsTest(unittest.TestCase):
    def test_missing_file_names_path_and_fix(self):
        path = "/nonexistent/resnet18.pth"
        with self.assertRaisesRegex(FileNotFoundError, r"/nonexistent/resnet18\.pth.*pretrained_backbone_weights=null"):
            ResNetDiffusionBackbone(input_shape=(16, 16), pretrained_backbone_weights=path)

    def test_unreadable_file_names_path(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "broken.pth")
            with open(path, "wb") as f:
                f.write(b"not a state dict")
            with self.assertRaisesRegex(RuntimeError, "broken.pth"):
                ResNetDiffusionBackbone(input_shape=(16, 16), pretrained_backbone_weights=path)

    def test_local_weights_are_loaded_and_enable_imagenet_normalization(self):
        torch.manual_seed(0)
        source = torchvision.models.resnet18(weights=None)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "resnet18.pth")
            torch.save(source.state_dict(), path)
            backbone = ResNetDiffusionBackbone(
                input_shape=(16, 16), pretrained_backbone_weights=path, camera_names=("top",)
            )
        encoder = backbone.rgb_encoder[0]
        torch.testing.assert_close(encoder.backbone[0].weight, source.conv1.weight)
        torch.testing.assert_close(encoder.backbone[7][1].conv2.weight, source.layer4[1].conv2.weight)

        x = torch.full((1, 3, 16, 16), 0.5)
        expected = (0.5 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
        torch.testing.assert_close(encoder._preprocess(x)[0, :, 3, 3], expected)
        plain = ResNetDiffusionBackbone(input_shape=(16, 16), camera_names=("top",)).rgb_encoder[0]
        torch.testing.assert_close(plain._preprocess(x), x)


class CropTest(unittest.TestCase):
    def setUp(self):
        self.image = torch.arange(16 * 16, dtype=torch.float32).view(1, 1, 16, 16).expand(1, 3, 16, 16) / 256

    def encoder(self, crop_is_random):
        backbone = ResNetDiffusionBackbone(
            input_shape=(16, 16), crop_shape=(8, 8), crop_is_random=crop_is_random, camera_names=("top",)
        )
        return backbone.rgb_encoder[0]

    def offsets(self, crops):
        # Top-left pixel value k/256 encodes the crop origin (k // 16, k % 16).
        return {divmod(int(round(c[0, 0, 0, 0].item() * 256)), 16) for c in crops}

    def test_center_crop_in_eval(self):
        encoder = self.encoder(crop_is_random=True).eval()
        torch.testing.assert_close(encoder._preprocess(self.image), self.image[..., 4:12, 4:12])

    def test_random_crop_in_train(self):
        encoder = self.encoder(crop_is_random=True).train()
        torch.manual_seed(0)
        crops = [encoder._preprocess(self.image) for _ in range(20)]
        for crop in crops:
            self.assertEqual(tuple(crop.shape), (1, 3, 8, 8))
        offsets = self.offsets(crops)
        self.assertGreater(len(offsets), 1)
        self.assertTrue(all(0 <= i <= 8 and 0 <= j <= 8 for i, j in offsets))

    def test_non_random_crop_is_center_in_train(self):
        encoder = self.encoder(crop_is_random=False).train()
        self.assertEqual(self.offsets([encoder._preprocess(self.image) for _ in range(5)]), {(4, 4)})


if __name__ == "__main__":
    unittest.main()


class SpatialSoftmaxTemperatureTest(unittest.TestCase):
    def test_keypoints_are_the_softmax_of_logits_over_the_temperature(self):
        torch.manual_seed(0)
        plain = SpatialSoftmax((4, 3, 5), num_kp=2)
        tempered = SpatialSoftmax((4, 3, 5), num_kp=2, temperature=0.25)
        tempered.nets.load_state_dict(plain.nets.state_dict())
        features = torch.randn(2, 4, 3, 5)
        logits = plain.nets(features).flatten(2)  # (B, K, 15)
        expected = torch.softmax(logits / 0.25, dim=-1) @ plain.pos_grid
        torch.testing.assert_close(tempered(features), expected)
        self.assertFalse(torch.allclose(plain(features), expected))

    def test_temperature_is_learned(self):
        pool = SpatialSoftmax((4, 3, 5), num_kp=2, temperature=0.1)
        pool(torch.randn(2, 4, 3, 5)).square().sum().backward()
        self.assertIsNotNone(pool.log_inverse_temperature.grad)
        self.assertNotEqual(pool.log_inverse_temperature.grad.item(), 0.0)

    def test_plain_softmax_keeps_the_state_dict_keys(self):
        plain = ResNetDiffusionBackbone(vision_backbone="small_cnn", input_shape=(32, 32), camera_names=("top",))
        tempered = ResNetDiffusionBackbone(
            vision_backbone="small_cnn", input_shape=(32, 32), camera_names=("top",), spatial_softmax_temperature=0.1
        )
        extra = set(tempered.state_dict()) - set(plain.state_dict())
        self.assertEqual(extra, {"rgb_encoder.0.pool.log_inverse_temperature"})

    def test_non_positive_temperature_is_named(self):
        with self.assertRaisesRegex(ValueError, "spatial_softmax_temperature=0"):
            SpatialSoftmax((4, 3, 5), temperature=0)


class SmallConvTrunkTest(unittest.TestCase):
    def test_quarter_resolution_feature_grid_and_output(self):
        backbone = ResNetDiffusionBackbone(vision_backbone="small_cnn", input_shape=(96, 96), camera_names=("top",))
        self.assertEqual(backbone.rgb_encoder[0].pool.pos_grid.shape[0], 24 * 24)
        self.assertEqual(tuple(backbone(camera_batch(size=(96, 96), cams=("top",))).shape), (2, 2, 64))

    def test_keypoint_follows_a_bright_dot(self):
        # The trunk must keep location: a keypoint map that fires on a single red pixel lands on its position.
        encoder = ResNetDiffusionBackbone(
            vision_backbone="small_cnn", input_shape=(32, 32), camera_names=("top",), spatial_softmax_num_keypoints=1
        ).rgb_encoder[0]
        with torch.no_grad():
            for conv in (m for m in encoder.backbone if isinstance(m, nn.Conv2d)):
                conv.weight.zero_()
                conv.bias.zero_()
                conv.weight[:, 0, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] = 1.0  # pass channel 0 on
            encoder.pool.nets.weight.fill_(50.0)
            encoder.pool.nets.bias.zero_()
        image = torch.zeros(1, 3, 32, 32)
        image[0, 0, 28, 4] = 1.0  # row 28 (bottom), column 4 (left)
        keypoint = encoder.pool(encoder.backbone(image))[0, 0]  # (x, y) in [-1, 1]
        self.assertLess(keypoint[0].item(), -0.5)
        self.assertGreater(keypoint[1].item(), 0.5)

    def test_group_norm_gives_features_that_vary_at_unit_scale(self):
        # What it fixes: at init the plain ReLU trunk's features differ between images by ~1 % of the input range,
        # so the keypoint logits are flat; after a GroupNorm per conv they differ at order one.
        image = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        spread = {}
        for group_norm in (True, False):
            torch.manual_seed(0)
            trunk = SmallConvTrunk(group_norm=group_norm)
            self.assertEqual(sum(isinstance(m, nn.GroupNorm) for m in trunk), 3 if group_norm else 0)
            with torch.no_grad():
                features = trunk(image)
            spread[group_norm] = (features - features.mean(0)).std().item()  # variation across images
        self.assertGreater(spread[True], 0.1)
        self.assertGreater(spread[True], 10 * spread[False])

    def test_much_cheaper_than_resnet18(self):
        small = ResNetDiffusionBackbone(vision_backbone="small_cnn", input_shape=(96, 96), camera_names=("top",))
        trunk_params = sum(p.numel() for p in small.rgb_encoder[0].backbone.parameters())
        self.assertLess(trunk_params, 11_176_512 // 100)

    def test_rejects_pretrained_weights_and_unknown_trunks(self):
        with self.assertRaisesRegex(ValueError, "small_cnn has no pretrained weights"):
            ResNetDiffusionBackbone(vision_backbone="small_cnn", pretrained_backbone_weights="w.pth", input_shape=(96, 96))
        with self.assertRaisesRegex(ValueError, "Unknown vision_backbone='vgg11'"):
            ResNetDiffusionBackbone(vision_backbone="vgg11", input_shape=(96, 96))
