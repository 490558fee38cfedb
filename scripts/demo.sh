#!/usr/bin/env bash
# The main job on an embedded default: set up, write sample lumbar spine studies (phantoms),
# export the shipped weights to the Triton repository, start Triton (CPU configs) on loopback,
# segment the real sample study (samples/spider_57, one SPIDER patient, CC BY 4.0) through Triton
# and print its findings, print every sample study's findings level by level against its truth
# (agree / disagree), then serve the MONAI Label app on Triton for OHIF (the real study and
# two phantoms in Orthanc over DICOMweb) and 3D Slicer until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
out=${1:-runs/demo}
bin=.venv/bin
export PATH="$PWD/$bin:$PATH" MONAI_LABEL_TRACKING_ENABLED=false
export PYTHONWARNINGS="ignore:\`torch.jit.interface\` is deprecated:FutureWarning"  # lumbarseg.QUIET_WARNINGS

$bin/lumbarseg phantoms --out "$out" --count 3 --seed 7 --modalities t2w,t1w
[ -f model_repository/spine_pipeline/configs/cpu.pbtxt ] && [ -f model_repository/fusion/1/model.onnx ] ||
  $bin/lumbarseg export --weights weights/lite

$bin/lumbarseg triton serve --cpu --log "$out/triton.log" &
triton=$!
trap 'kill $triton 2>/dev/null; wait $triton 2>/dev/null' EXIT
for _ in $(seq 120); do $bin/lumbarseg triton health >/dev/null 2>&1 && break; sleep 1; done
$bin/lumbarseg triton health

sample=samples/spider_57/57_t2.nii.gz
$bin/lumbarseg infer "$sample" --backend triton --out "$out/demo_label.nii.gz" --report "$out/demo_report.json"
$bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["summary"])' "$out/demo_report.json"
# How far to trust these findings: each level of every sample study against its truth (the
# radiologist's gradings of the real patient, the phantoms' known herniations and stenoses),
# from the same networks in process.
$bin/lumbarseg evaluate-findings --data samples --source model --out "$out/findings_real_sample.json"
$bin/lumbarseg evaluate-findings --data "$out" --source model --out "$out/findings_phantoms.json"

conf=(--conf backend triton --conf triton_url grpc://127.0.0.1:8011 --conf triton_repository "$PWD/model_repository")
if command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ]; then
  # Orthanc holds the phantoms as clinical DICOM; OHIF: the URLs printed below.
  $bin/lumbarseg viewer --phantoms 2 --seed 7 --upload "$sample" --weights weights/lite "${conf[@]}"
else
  echo "demo: Orthanc is not installed (apt-get install orthanc orthanc-dicomweb): serving $out as a local datastore" >&2
  mkdir -p "$out/studies" && cp "$sample" "$out"/*_image.nii.gz "$out/studies/"
  monailabel start_server --app apps/lumbar_spine --studies "$out/studies" --host 127.0.0.1 --port 8000 "${conf[@]}"
fi
