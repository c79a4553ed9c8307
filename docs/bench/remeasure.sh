#!/usr/bin/env bash
# Re-measures the committed figures of README.md and docs/ in one go, one command after another
# (never two at once), on an idle machine: check `uptime` first. Each command writes its JSON with
# a provenance record (command, git commit, threads, load average before and after).
#   bash docs/bench/remeasure.sh            # everything below, about 5 hours on 2 cores
set -euo pipefail
cd "$(dirname "$0")/../.."
uptime
rm -rf runs/gmm runs/gmm-learned
# ground-truth acceptance (docs/model.md, "Ground-truth acceptance run")
latentdit train --config configs/gmm.toml --out runs/gmm --quiet
latentdit evaluate --run runs/gmm --out docs/bench/gmm_pca_metrics.json
latentdit train --config configs/gmm.toml --out runs/gmm-learned --set encoder.init=random --set encoder.learn=true --quiet
latentdit evaluate --run runs/gmm-learned --out docs/bench/gmm_learned_metrics.json
# samplers with the exact score, each at its intended budget, and the low-NFE block
latentdit bench sampler --core-only --threads 1 --out docs/bench/sampler_core.json
# the quick rates sweep (docs/rates.md)
rm -f docs/rates-quick/rates.sqlite
latentdit rates --out docs/rates-quick --quick --workers 2 --no-progress
# the full rates sweep (docs/rates.md; about 2 hours on 2 cores)
rm -f docs/rates/rates.sqlite
latentdit rates --out docs/rates --workers 2 --no-progress
# training and forward speed against diffusers' DiT (docs/performance.md)
latentdit bench model --out docs/bench/model.json --threads 1 --compile
latentdit bench model --out docs/bench/model_threads2.json --threads 2 --no-memory
python docs/bench/profile_step.py --out docs/bench/profile_step.json --threads 1
python docs/bench/train_step.py --out docs/bench/train_step.json --threads 1
# host-memory reuse against the C library's allocator, on the whole DiT (docs/performance.md)
python docs/bench/hostmem.py --out docs/bench/hostmem.json
# the whole score network at long sequence lengths, with peak memory and L = 65536 (docs/efficient-dit.md)
latentdit bench dit --out docs/bench/dit.json --long --repeats 3
# the configs/long.toml run (4096 tokens) and its metrics (docs/efficient-dit.md)
rm -rf runs/long
latentdit train --config configs/long.toml --out runs/long --quiet
latentdit evaluate --run runs/long --out docs/bench/long_metrics.json
# quality side by side, exact vs poly vs ReLU linear (docs/efficient-dit.md; about an hour)
python -m latentdit.experiments.efficient --out docs/efficient
# the PCA floor of the linear demo and its sampler ablation (docs/demo.md)
python docs/bench/fid_floor.py --dims 64,256 --num 2000
python docs/bench/fid_floor.py --out docs/bench/fid_floor_n1000.json --dims 144,400,576 --num 1000
rm -rf runs/demo-pca
latentdit demo --encoder linear --out runs/demo-pca --quiet
python docs/bench/demo_ablation.py --run runs/demo-pca/run --num 1000 --out docs/bench/ablation_d64.json \
    g=2,d=0,fid=1 g=2,d=1,fid=1 g=1.5,d=1,fid=1 g=1,d=1 g=2,d=1,s=100
# the attention kernels alone (docs/attention.md)
latentdit bench attention --out docs/bench/attention.json
# the autoencoder demo at guidance 2 (docs/bench/demo_ae.json is its metrics.json) and the same run
# at guidance 1.5, the default (docs/demo.md)
rm -rf runs/demo-ae
latentdit demo --out runs/demo-ae --quiet --set sample.guidance=2
cp runs/demo-ae/metrics.json docs/bench/demo_ae.json
latentdit evaluate --run runs/demo-ae/run --guidance 1.5 --out docs/bench/demo_ae_guidance_1.5.json
# README's main command on a fresh clone: the autoencoder demo, installs and FID included
python docs/bench/fresh_demo.py --out docs/bench/fresh_demo.json
# Inception feature throughput, reference and fast paths (docs/demo.md)
latentdit bench inception --out docs/bench/inception.json
uptime
