"""The layering: the maths and the models import without any pipeline package."""

import subprocess
import sys

PIPELINE = ("safetensors", "yaml", "tqdm", "tensorboard", "matplotlib", "PIL", "nibabel", "h5py", "monai")


def test_the_maths_and_the_models_need_only_torch_numpy_and_scipy():
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in PIPELINE)  # import of a None entry fails
    script = f"""
import sys
{blocked}
import torch, ssn
model = ssn.models.create("unet", num_classes=2, rank=3, features=(4, 8))
images, target = torch.randn(2, 1, 16, 16), torch.randint(0, 2, (2, 16, 16))
model.loss(images, target).backward()
samples = model.sample_labels(images, 4)
print(ssn.metrics.generalized_energy_distance(samples[:, 0], target[:1]) >= 0)
print(sorted(m for m in sys.modules if m.split(".")[0] in {PIPELINE!r} and sys.modules[m] is not None))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "[]"]
