"""How well are the ceT1 and T2 of each BraTS source pair co-registered? 3D rigid Mattes MI (SimpleITK)
between the isotropic 1 mm t1c and t2 of one patient, from identity. Prints the rotation and shift
found: a pair that is not co-registered limits every ceT1-vs-T2 accuracy figure built on it.

    for c in BraTS-MET-00110-000_sri24 BraTSorch-case_sri24 TCGA-FG-6692_sri24 TCGA-DU-7294_sri24; do
        python benchmarks/check_source_pairs.py $c; done
"""
import SimpleITK as sitk, numpy as np, sys
sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
from pathlib import Path
d = str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brats" / sys.argv[1])
f = sitk.ReadImage(d + "/t2.nii.gz", sitk.sitkFloat32); m = sitk.ReadImage(d + "/t1c.nii.gz", sitk.sitkFloat32)
R = sitk.ImageRegistrationMethod(); R.SetMetricAsMattesMutualInformation(32); R.SetMetricSamplingStrategy(R.REGULAR); R.SetMetricSamplingPercentage(0.05, 1)
R.SetInterpolator(sitk.sitkLinear); R.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-3, 200, relaxationFactor=0.6); R.SetOptimizerScalesFromPhysicalShift()
R.SetShrinkFactorsPerLevel([2, 1]); R.SetSmoothingSigmasPerLevel([1.0, 0.0])
tx = sitk.Euler3DTransform(); tx.SetCenter(f.TransformContinuousIndexToPhysicalPoint([(s-1)/2 for s in f.GetSize()]))
R.SetInitialTransform(tx, inPlace=False); out = R.Execute(f, m)
p = np.array(out.GetParameters()); print(sys.argv[1], "rot deg", np.degrees(p[:3]).round(2), "shift mm", p[3:].round(2), "|t|", np.linalg.norm(p[3:]).round(2))
