"""nnU-Net v2 baseline for the benchmarks: trained here on the same labelled calf leg as calf_mri.

nnU-Net lives in its own virtual environment (``make nnunet-env`` → ``.venv-nnunet``): its
``dynamic-network-architectures`` pulls ``timm`` and ``torchvision``, and the torchvision wheel
pip finds does not load with our CPU torch (``operator torchvision::nms does not exist``), so it
is uninstalled there; nnU-Net's planner, trainer and predictor do not need it. Keeping it out of
``.venv`` keeps the pipeline's own environment what CI installs.

    python benchmarks/nnunet_baseline.py prepare      # dataset 501 from shared/data, plan, preprocess (2d, 3d_fullres)
    python benchmarks/nnunet_baseline.py train --epochs 20 [--configuration 3d_fullres] [--iterations-per-epoch N]
    python benchmarks/nnunet_baseline.py predict IN.nii.gz OUT.nii.gz [--no-mirroring] [--configuration 3d_fullres]

``--iterations-per-epoch`` (nnU-Net's default 250) shortens training where only the predictor's
speed is measured (the whole-process race): a 3d_fullres iteration takes seconds on this CPU.

Everything is written under ``benchmarks/work/nnunet`` (git-ignored). The labels are the 7 calf
muscles of ``bundles/calf_mri`` as 1..7 (ontology right-side values through
``muscle_pipeline.datasets.map_labels``), so predictions compare with calf_mri's directly.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "work" / "nnunet"
VENV = Path(os.environ.get("NNUNET_VENV", ROOT / ".venv-nnunet"))
DATASET_ID = 501
DATASET = f"Dataset{DATASET_ID:03d}_CalfDTI"
CONFIGURATIONS = ("2d", "3d_fullres")
SHARED = Path(os.environ.get("MUSCLE_PIPELINE_SHARED", ROOT.parent / "shared")) / "data"
CALF_IMAGE = SHARED / "qmritools" / "calf_dti_labeled_half" / "twoLegs_x80-160.nii.gz"
CALF_LABELS = SHARED / "qmritools" / "calf_dti_labeled_half" / "labels_x80-160.nii.gz"


def environment(threads: int | None = None) -> dict:
    env = dict(os.environ)
    env.update(nnUNet_raw=str(WORK / "raw"), nnUNet_preprocessed=str(WORK / "preprocessed"),
               nnUNet_results=str(WORK / "results"), OMP_WAIT_POLICY="PASSIVE")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), nnUNet_def_n_proc=str(threads))
    return env


def calf_structures() -> list[str]:
    config = json.loads((ROOT / "bundles" / "calf_mri" / "configs" / "inference.json").read_text())
    return list(config["structures"])


def nnunet_labels_to_ontology() -> dict[int, int]:
    """nnU-Net class index → ontology right-side value, in calf_mri's structure order."""
    from muscle_pipeline.cascade.model import right_value

    return {i: right_value(m) for i, m in enumerate(calf_structures(), start=1)}


def prepare() -> Path:
    """Write dataset 501 (one case: the labelled right calf) and plan/preprocess its 2d and 3d_fullres
    configurations."""
    import nibabel as nib
    import numpy as np

    from muscle_pipeline.datasets import map_labels

    raw = WORK / "raw" / DATASET
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    image = nib.load(CALF_IMAGE)
    labels = nib.load(CALF_LABELS)
    ontology_values = np.asarray(map_labels(np.asarray(labels.dataobj).astype(np.int64), "qmritools_calf"))
    index = np.zeros_like(ontology_values, dtype=np.uint8)
    for i, value in nnunet_labels_to_ontology().items():
        index[ontology_values == value] = i
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj, np.float32), image.affine), raw / "imagesTr" / "calf_000_0000.nii.gz")
    nib.save(nib.Nifti1Image(index, labels.affine), raw / "labelsTr" / "calf_000.nii.gz")
    names = {"background": 0, **{m: i for i, m in enumerate(calf_structures(), start=1)}}
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": names, "numTraining": 1, "file_ending": ".nii.gz",
        "name": "calf_dti_labeled_half (QMRITools demo, BSD-3), right calf, 7 muscles"}, indent=1))
    run([VENV / "bin" / "nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", *CONFIGURATIONS, "-np", "1",
         "--verify_dataset_integrity"])
    return raw


# nnU-Net finds trainer classes by importing every module of its trainer package, and its Primus
# trainers import timm, which needs the unusable torchvision. Both scripts hand nnU-Net the class
# directly instead; nothing else of nnU-Net's training or prediction changes.
TRAIN_SCRIPT = r"""
import sys, torch
import nnunetv2.run.run_training as rt
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
epochs, threads, configuration, iterations = int(sys.argv[1]), int(sys.argv[2]), sys.argv[4], int(sys.argv[5])
torch.set_num_threads(threads)
name = f"nnUNetTrainer_{epochs}epochs" + ("" if iterations == 250 else f"_{iterations}it")
class Trainer(nnUNetTrainer):  # nnUNetTrainer_Xepochs with any X; nnU-Net records __init__'s arguments by name
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = epochs
        self.num_iterations_per_epoch = iterations
        self.num_val_iterations_per_epoch = max(1, iterations // 5)
Trainer.__name__ = Trainer.__qualname__ = name
rt.recursive_find_trainer_class_by_name = lambda wanted: Trainer
rt.run_training(sys.argv[3], configuration, "all", trainer_class_name=name, device=torch.device("cpu"))
"""


def train(epochs: int, threads: int = 2, configuration: str = "2d", iterations_per_epoch: int = 250) -> Path:
    """Train ``configuration`` on fold 'all' (one case: no cross-validation) on the CPU."""
    run([VENV / "bin" / "python", "-c", TRAIN_SCRIPT, str(epochs), str(threads), str(DATASET_ID), configuration,
         str(iterations_per_epoch)], threads=threads, extra_env={"nnUNet_n_proc_DA": "1"})
    return model_folder(configuration)


def model_folder(configuration: str = "2d") -> Path:
    """The most recently trained model folder of ``configuration`` (one with a checkpoint)."""
    results = WORK / "results" / DATASET
    found = sorted((p for p in results.glob(f"nnUNetTrainer_*__nnUNetPlans__{configuration}")
                    if any((p / "fold_all" / c).exists() for c in ("checkpoint_final.pth", "checkpoint_best.pth"))),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no trained nnU-Net {configuration} model under {results} "
                                f"(run: {Path(__file__).name} train --configuration {configuration})")
    return found[-1]


def run(cmd, threads: int | None = None, extra_env: dict | None = None) -> None:
    env = environment(threads)
    env.update(extra_env or {})
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, env=env)


# --- prediction (runs inside .venv-nnunet, started by the benchmark as a subprocess) ----------------
PREDICT_SCRIPT = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import torch
import nnunetv2.inference.predict_from_raw_data as nnp
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
nnp.recursive_find_trainer_class_by_name = lambda name: nnUNetTrainer  # see TRAIN_SCRIPT: no timm import
model, src, dst, mirroring, threads = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1", int(sys.argv[5])
torch.set_num_threads(threads)
t_import = time.perf_counter() - t0
predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring, perform_everything_on_device=False,
                            device=torch.device("cpu"), verbose=False, verbose_preprocessing=False, allow_tqdm=False)
import os
checkpoint = "checkpoint_final.pth" if os.path.exists(os.path.join(model, "fold_all", "checkpoint_final.pth")) else "checkpoint_best.pth"
predictor.initialize_from_trained_model_folder(model, use_folds=("all",), checkpoint_name=checkpoint)
t_load = time.perf_counter() - t0 - t_import
t1 = time.perf_counter()
predictor.predict_from_files([[src]], [dst], save_probabilities=False, overwrite=True,
                             num_processes_preprocessing=1, num_processes_segmentation_export=1)
t_predict = time.perf_counter() - t1
print(json.dumps({"checkpoint": checkpoint, "import_s": t_import, "load_s": t_load, "predict_s": t_predict,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "peak_rss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def predict(src: str | Path, dst: str | Path, mirroring: bool = True, threads: int = 2, model: Path | None = None,
            configuration: str = "2d") -> dict:
    """Predict ``src`` into ``dst`` (nnU-Net class indices) in a fresh process; returns its timings.

    ``predict_s`` is nnU-Net's ``predict_from_files`` (read, preprocess, sliding window, export),
    the counterpart of our per-case figure; ``import_s``/``load_s`` are one-off process costs.
    """
    model = Path(model) if model else model_folder(configuration)
    dst_base = str(dst).replace(".nii.gz", "")  # nnU-Net appends the file ending itself
    out = subprocess.run([str(VENV / "bin" / "python"), "-c", PREDICT_SCRIPT, str(model), str(src), dst_base,
                          "1" if mirroring else "0", str(threads)],
                         check=True, env=environment(threads), capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare")
    p_train = sub.add_parser("train")
    p_train.add_argument("--epochs", type=int, default=20)
    p_train.add_argument("--threads", type=int, default=2)
    p_train.add_argument("--configuration", choices=CONFIGURATIONS, default="2d")
    p_train.add_argument("--iterations-per-epoch", type=int, default=250)
    p_pred = sub.add_parser("predict")
    p_pred.add_argument("src")
    p_pred.add_argument("dst")
    p_pred.add_argument("--no-mirroring", action="store_true")
    p_pred.add_argument("--threads", type=int, default=2)
    p_pred.add_argument("--configuration", choices=CONFIGURATIONS, default="2d")
    args = parser.parse_args(argv)
    if not (VENV / "bin" / "nnUNetv2_train").exists():
        sys.exit(f"nnU-Net is not installed in {VENV}: run `make nnunet-env` first")
    if args.command == "prepare":
        print(prepare())
    elif args.command == "train":
        print(train(args.epochs, args.threads, args.configuration, args.iterations_per_epoch))
    else:
        print(json.dumps(predict(args.src, args.dst, not args.no_mirroring, args.threads,
                                 configuration=args.configuration)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
