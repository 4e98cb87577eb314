#!/usr/bin/env python3
"""Regenerates test/fixtures/parity.json, the optimizer parity golden vectors.

Usage (from the repository root, with a Python that has torch and numpy,
e.g. Debian's python3-torch and python3-numpy):

    python3 scripts/gen_parity_vectors.py            # rewrite the fixture
    python3 scripts/gen_parity_vectors.py --check    # fail if the fixture is stale

Every case is a table (dim, optimizer, constant initializer), five keys and a
few pushes. The expected weights after every push come from:

  * torch.optim.SGD / Adagrad / Adam / RMSprop run in float32 on CPU, with one
    torch Parameter per embedding row. Per-row parameters give exactly the
    engine's per-row ("lazy") semantics: a row that a push does not touch has
    grad None and torch skips it, so its Adam step count and its SGD "first
    step" are its own;
  * for FTRL, a numpy float32 transcription of TensorFlow's ApplyFtrlV2 kernel
    (see ftrl_update below).

Inputs are deterministic: each case's gradients come from a numpy Generator
seeded with the CRC-32 of the case name, so adding or reordering cases does not
change the others, and two runs with the same torch/numpy produce the same file.

Before writing, the script checks the vectors against an independent numpy
float32 transcription of the engine's documented formulas (docs/optimizers.md),
within the same tolerance the TypeScript test uses, and checks that a list of
plausible wrong formulas ("mutants": eps inside the square root, no Adam bias
correction, dampening on SGD's first step, TensorFlow-style RMSprop momentum,
the ApplyFtrlV2 doc-string variant, ...) are each rejected by that tolerance
on at least one case. That keeps the test tight enough to fail on a wrong
formula.
"""

import argparse
import json
import os
import sys
import zlib

import numpy as np
import torch

F = np.float32

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, 'test', 'fixtures', 'parity.json')

# Same tolerance as test/parity.test.ts: |got - expected| <= ABS_TOL + REL_TOL * |expected|.
ABS_TOL = 1e-6
REL_TOL = 4e-6

# Hyperparameter defaults, mirroring OPTIMIZER_PARAMS in native/engine.ts.
DEFAULTS = {
    'sgd': {'momentum': 0.0, 'dampening': 0.0, 'nesterov': False, 'weightDecay': 0.0},
    'adagrad': {'initialAccumulator': 0.0, 'eps': 1e-10},
    'adam': {'beta1': 0.9, 'beta2': 0.999, 'eps': 1e-8},
    'rmsprop': {'alpha': 0.99, 'eps': 1e-8, 'momentum': 0.0, 'centered': False},
    'ftrl': {'lrPower': -0.5, 'initialAccumulator': 0.1, 'l1': 0.0, 'l2': 0.0, 'l2Shrinkage': 0.0},
}

# uint64 keys as decimal strings: 0, 1, 2^32, 2^53 + 1 (not a safe JS integer) and 2^64 - 1.
KEYS = ['0', '1', '4294967296', '9007199254740993', '18446744073709551615']
# Per-row gradient scale, so rows see gradients of different magnitudes (this is
# what makes eps placement and FTRL's L1 threshold visible).
ROW_SCALE = [1.0, 0.25, 0.05, 0.01, 0.5]
STEPS = 6

# Step indices below are 0-based: 'lr': {2: x} sets lr = x before the third push.
CASES = [
    # --- SGD (torch.optim.SGD) ---
    dict(name='sgd-plain-d1', dim=1, init=0.1, opt={'type': 'sgd', 'lr': 0.1}),
    dict(name='sgd-plain-d33', dim=33, init=-0.25, opt={'type': 'sgd', 'lr': 0.05}),
    dict(name='sgd-momentum-dampening', dim=33, init=0.1,
         opt={'type': 'sgd', 'lr': 0.05, 'momentum': 0.9, 'dampening': 0.3}, lr={2: 0.02}),
    dict(name='sgd-nesterov-weight-decay', dim=8, init=0.5,
         opt={'type': 'sgd', 'lr': 0.05, 'momentum': 0.8, 'nesterov': True, 'weightDecay': 0.05}),
    dict(name='sgd-momentum-partial', dim=8, init=0.1,
         opt={'type': 'sgd', 'lr': 0.05, 'momentum': 0.9, 'dampening': 0.5},
         touch=[[0, 1], [0, 2, 3], [1, 4], [0, 1, 2, 3, 4], [3], [2, 4]]),
    # --- Adagrad (torch.optim.Adagrad) ---
    dict(name='adagrad-acc0.1-eps1e-10', dim=8, init=0.1,
         opt={'type': 'adagrad', 'lr': 0.1, 'initialAccumulator': 0.1, 'eps': 1e-10}),
    dict(name='adagrad-acc0.1-eps1e-7', dim=33, init=-0.1,
         opt={'type': 'adagrad', 'lr': 0.05, 'initialAccumulator': 0.1, 'eps': 1e-7}, lr={2: 0.02}),
    dict(name='adagrad-acc0-eps1e-3', dim=1, init=0.2, scale=0.02,
         opt={'type': 'adagrad', 'lr': 0.1, 'eps': 1e-3}),
    # --- Adam (torch.optim.Adam), per-row step count ---
    dict(name='adam-defaults', dim=8, init=0.1, opt={'type': 'adam', 'lr': 0.01}),
    dict(name='adam-custom-betas', dim=33, init=-0.05,
         opt={'type': 'adam', 'lr': 0.02, 'beta1': 0.8, 'beta2': 0.95, 'eps': 1e-3}, lr={2: 0.005}),
    dict(name='adam-lazy-partial', dim=8, init=0.1,
         opt={'type': 'adam', 'lr': 0.01, 'beta1': 0.5, 'beta2': 0.9, 'eps': 1e-4},
         touch=[[0, 1], [0, 2, 3], [1, 4], [0, 1, 2, 3, 4], [3], [2, 4]]),
    # --- RMSprop (torch.optim.RMSprop) ---
    dict(name='rmsprop-plain', dim=8, init=0.1, opt={'type': 'rmsprop', 'lr': 0.01}),
    dict(name='rmsprop-momentum', dim=1, init=-0.1,
         opt={'type': 'rmsprop', 'lr': 0.01, 'alpha': 0.9, 'eps': 1e-4, 'momentum': 0.9}),
    dict(name='rmsprop-momentum-centered', dim=33, init=0.1,
         opt={'type': 'rmsprop', 'lr': 0.01, 'alpha': 0.9, 'eps': 1e-3, 'momentum': 0.5, 'centered': True},
         lr={3: 0.03}),
    # --- FTRL-Proximal (TensorFlow ApplyFtrlV2, numpy float32) ---
    dict(name='ftrl-defaults', dim=8, init=0.1, opt={'type': 'ftrl', 'lr': 0.1}),
    dict(name='ftrl-l1-l2-shrinkage', dim=33, init=0.1,
         opt={'type': 'ftrl', 'lr': 0.1, 'l1': 0.05, 'l2': 0.1, 'l2Shrinkage': 0.05}, lr={3: 0.05}),
    dict(name='ftrl-power-0.7', dim=8, init=-0.2,
         opt={'type': 'ftrl', 'lr': 0.05, 'lrPower': -0.7, 'initialAccumulator': 0.2,
              'l1': 0.01, 'l2': 0.02, 'l2Shrinkage': 0.1}),
    dict(name='ftrl-power-0.3-acc0.01', dim=1, init=0.3,
         opt={'type': 'ftrl', 'lr': 0.2, 'lrPower': -0.3, 'initialAccumulator': 0.01, 'l1': 0.02}),
    # --- duplicate keys in one push: the engine sums them before the update ---
    dict(name='dup-keys-adagrad', dim=8, init=0.1,
         opt={'type': 'adagrad', 'lr': 0.1, 'initialAccumulator': 0.1},
         push=[[0, 1, 0, 2, 3, 4, 1, 0], [4, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 2, 2],
               [3, 0, 3, 1, 2, 4], [0, 1, 2, 3, 4], [4, 3, 2, 1, 0, 4, 3, 2, 1, 0]]),
    dict(name='dup-keys-ftrl', dim=8, init=0.1,
         opt={'type': 'ftrl', 'lr': 0.1, 'l1': 0.02, 'l2': 0.05},
         push=[[0, 0, 1, 2, 3, 4, 4], [1, 0, 2, 3, 1, 4], [0, 1, 2, 3, 4, 0, 1, 2, 3, 4],
               [2, 2, 2, 0, 1, 3, 4], [0, 1, 2, 3, 4], [4, 0, 3, 1, 2, 0]]),
]


def hyper(opt):
    out = dict(DEFAULTS[opt['type']])
    out.update({k: v for k, v in opt.items() if k != 'type'})
    return out


def make_inputs(case):
    """Per step: the pushed key indices (maybe with duplicates) and their float32 gradients."""
    rng = np.random.default_rng(zlib.crc32(case['name'].encode()))
    dim = case['dim']
    scale = case.get('scale', 1.0)
    if 'push' in case:
        pushes = case['push']
    elif 'touch' in case:
        pushes = case['touch']
    else:
        pushes = [list(range(len(KEYS)))] * STEPS
    steps = []
    for idx in pushes:
        g = rng.standard_normal((len(idx), dim)) * np.array([ROW_SCALE[i] for i in idx])[:, None] * scale
        steps.append((list(idx), g.astype(F)))
    return steps


def summed(idx, grads, dim):
    """Row index -> float32 sum of that row's gradients in push order (what the engine applies)."""
    out = {}
    for i, g in zip(idx, grads):
        out[i] = (out[i] + g).astype(F) if i in out else g.copy()
    return out


# ---------------------------------------------------------------------------
# torch reference (SGD, Adagrad, Adam, RMSprop)
# ---------------------------------------------------------------------------

def torch_optimizer(opt, params):
    h = hyper(opt)
    t = opt['type']
    if t == 'sgd':
        return torch.optim.SGD(params, lr=h['lr'], momentum=h['momentum'], dampening=h['dampening'],
                               nesterov=h['nesterov'], weight_decay=h['weightDecay'], foreach=False)
    if t == 'adagrad':
        return torch.optim.Adagrad(params, lr=h['lr'], lr_decay=0, weight_decay=0,
                                   initial_accumulator_value=h['initialAccumulator'], eps=h['eps'],
                                   foreach=False)
    if t == 'adam':
        return torch.optim.Adam(params, lr=h['lr'], betas=(h['beta1'], h['beta2']), eps=h['eps'],
                                weight_decay=0, amsgrad=False, foreach=False)
    if t == 'rmsprop':
        return torch.optim.RMSprop(params, lr=h['lr'], alpha=h['alpha'], eps=h['eps'], weight_decay=0,
                                   momentum=h['momentum'], centered=h['centered'], foreach=False)
    raise ValueError(t)


def run_torch(case, inputs):
    dim = case['dim']
    params = [torch.nn.Parameter(torch.full((dim,), case['init'], dtype=torch.float32)) for _ in KEYS]
    optim = torch_optimizer(case['opt'], params)
    lr_changes = case.get('lr', {})
    out = []
    for s, (idx, grads) in enumerate(inputs):
        if s in lr_changes:
            for group in optim.param_groups:
                group['lr'] = lr_changes[s]
        sums = summed(idx, grads, dim)
        for r, p in enumerate(params):
            p.grad = torch.from_numpy(sums[r].copy()) if r in sums else None
        optim.step()
        out.append(np.stack([p.detach().numpy().copy() for p in params]))
    return out


# ---------------------------------------------------------------------------
# numpy float32 transcription of the engine's formulas (docs/optimizers.md),
# with optional mutants. For FTRL this IS the reference.
# ---------------------------------------------------------------------------

def ftrl_update(w, st, g, h, lr, mutant):
    """One FTRL-Proximal step, TensorFlow's ApplyFtrlV2 kernel
    (functor::ApplyFtrlV2<CPUDevice, T> in tensorflow/core/kernels/training_ops.cc,
    the kernel behind tf.raw_ops.ApplyFtrlV2 / tf.keras.optimizers.Ftrl):

        grad_with_shrinkage = grad + 2 * l2_shrinkage * var
        new_accum = accum + grad * grad                       # plain grad, not the shrunk one
        linear += grad_with_shrinkage - (new_accum^(-lr_power) - accum^(-lr_power)) / lr * var
        quadratic = new_accum^(-lr_power) / lr + 2 * l2
        var = (sign(linear) * l1 - linear) / quadratic  if |linear| > l1  else 0
        accum = new_accum

    (x^0.5 is computed with sqrt when lr_power == -0.5, as the kernel does.)
    Note: the op's doc string (tf.raw_ops.ApplyFtrlV2) shows accum updated with
    grad_with_shrinkage^2 and "linear += ... + sigma * var"; the kernel does
    neither, and the kernel is what TensorFlow computes. Both doc-string
    variants are mutants below and must be rejected.
    accum starts at initial_accumulator_value, linear at 0.
    """
    p = F(-h['lrPower'])
    lr = F(lr)
    l1, l2, l2s = F(h['l1']), F(h['l2']), F(h['l2Shrinkage'])
    if mutant == 'ftrl-no-shrinkage':
        l2s = F(0)
    gs = (g + F(2) * l2s * w).astype(F)
    acc = st['accum']
    new_acc = (acc + (gs * gs if mutant == 'ftrl-accum-with-shrinkage' else g * g)).astype(F)

    def powp(x):
        return np.sqrt(x) if h['lrPower'] == -0.5 else np.power(x, p)

    sigma = ((powp(new_acc) - powp(acc)) / lr).astype(F)
    if mutant == 'ftrl-linear-plus-sigma':
        lin = (st['linear'] + gs + sigma * w).astype(F)
    else:
        lin = (st['linear'] + gs - sigma * w).astype(F)
    two_l2 = l2 if mutant == 'ftrl-l2-not-doubled' else F(2) * l2
    quad = (powp(new_acc) / lr + two_l2).astype(F)
    x = (np.sign(lin).astype(F) * l1 - lin).astype(F)
    w = np.where(np.abs(lin) > l1, x / quad, F(0)).astype(F)
    st['accum'] = new_acc
    st['linear'] = lin
    return w


def spec_update(t, w, st, g, h, lr, mutant, global_step):
    """Engine formula for one row; st is the row's optimizer state (created empty)."""
    lr32 = F(lr)
    if t == 'sgd':
        mom, damp = F(h['momentum']), F(h['dampening'])
        if mutant != 'sgd-no-weight-decay':
            g = (g + F(h['weightDecay']) * w).astype(F)
        if h['momentum'] != 0:
            if 'buf' not in st:
                st['buf'] = ((F(1) - damp) * g).astype(F) if mutant == 'sgd-dampening-on-first-step' else g.copy()
            else:
                st['buf'] = (mom * st['buf'] + (F(1) - damp) * g).astype(F)
            if h['nesterov'] and mutant != 'sgd-nesterov-ignored':
                g = (g + mom * st['buf']).astype(F)
            else:
                g = st['buf']
        return (w - lr32 * g).astype(F)
    if t == 'adagrad':
        if 'sum' not in st:
            st['sum'] = np.full_like(w, F(h['initialAccumulator']))
        old = st['sum']
        st['sum'] = (st['sum'] + g * g).astype(F)
        s = old if mutant == 'adagrad-sum-after-update' else st['sum']
        eps = F(h['eps'])
        den = np.sqrt(s + eps) if mutant == 'adagrad-eps-inside-sqrt' else np.sqrt(s) + eps
        return (w - lr32 * g / den).astype(F)
    if t == 'adam':
        b1, b2 = h['beta1'], h['beta2']
        st.setdefault('m', np.zeros_like(w))
        st.setdefault('v', np.zeros_like(w))
        st['step'] = st.get('step', 0) + 1
        step = global_step if mutant == 'adam-global-step' else st['step']
        st['m'] = (F(b1) * st['m'] + F(1 - b1) * g).astype(F)
        st['v'] = (F(b2) * st['v'] + F(1 - b2) * g * g).astype(F)
        bc1, bc2 = 1 - b1 ** step, 1 - b2 ** step
        if mutant == 'adam-no-bias-correction':
            bc1 = bc2 = 1.0
        eps = F(h['eps'])
        if mutant == 'adam-eps-before-bias-correction':
            den = (np.sqrt(st['v']) + eps) / F(np.sqrt(bc2))
        else:
            den = np.sqrt(st['v']) / F(np.sqrt(bc2)) + eps
        return (w - F(lr / bc1) * st['m'] / den).astype(F)
    if t == 'rmsprop':
        a = h['alpha']
        st.setdefault('sq', np.zeros_like(w))
        st['sq'] = (F(a) * st['sq'] + F(1 - a) * g * g).astype(F)
        eps = F(h['eps'])
        if h['centered'] and mutant != 'rmsprop-centered-ignored':
            st.setdefault('ga', np.zeros_like(w))
            st['ga'] = (F(a) * st['ga'] + F(1 - a) * g).astype(F)
            var = (st['sq'] - st['ga'] * st['ga']).astype(F)
        else:
            var = st['sq']
        avg = np.sqrt(var + eps) if mutant == 'rmsprop-eps-inside-sqrt' else np.sqrt(var) + eps
        if h['momentum'] > 0:
            st.setdefault('buf', np.zeros_like(w))
            if mutant == 'rmsprop-tf-momentum':  # TensorFlow's form: lr inside the buffer
                st['buf'] = (F(h['momentum']) * st['buf'] + lr32 * g / avg).astype(F)
                return (w - st['buf']).astype(F)
            st['buf'] = (F(h['momentum']) * st['buf'] + g / avg).astype(F)
            return (w - lr32 * st['buf']).astype(F)
        return (w - lr32 * g / avg).astype(F)
    if t == 'ftrl':
        if 'accum' not in st:
            st['accum'] = np.full_like(w, F(h['initialAccumulator']))
            st['linear'] = np.zeros_like(w)
        return ftrl_update(w, st, g, h, lr, mutant)
    raise ValueError(t)


def run_spec(case, inputs, mutant=None):
    dim = case['dim']
    h = hyper(case['opt'])
    t = case['opt']['type']
    lr = h['lr']
    lr_changes = case.get('lr', {})
    rows = [np.full(dim, F(case['init']), dtype=F) for _ in KEYS]
    states = [{} for _ in KEYS]
    out = []
    for s, (idx, grads) in enumerate(inputs):
        if s in lr_changes and mutant != 'lr-change-ignored':
            lr = lr_changes[s]
        if mutant == 'dup-last-wins':
            sums = {i: g for i, g in zip(idx, grads)}
            updates = list(sums.items())
        elif mutant == 'dup-applied-one-by-one':
            updates = list(zip(idx, grads))
        else:
            updates = list(summed(idx, grads, dim).items())
        for r, g in updates:
            rows[r] = spec_update(t, rows[r], states[r], g, h, lr, mutant, s + 1)
        out.append(np.stack(rows))
    return out


MUTANTS = [
    'lr-change-ignored',
    'dup-last-wins', 'dup-applied-one-by-one',
    'sgd-no-weight-decay', 'sgd-dampening-on-first-step', 'sgd-nesterov-ignored',
    'adagrad-eps-inside-sqrt', 'adagrad-sum-after-update',
    'adam-no-bias-correction', 'adam-eps-before-bias-correction', 'adam-global-step',
    'rmsprop-eps-inside-sqrt', 'rmsprop-centered-ignored', 'rmsprop-tf-momentum',
    'ftrl-accum-with-shrinkage', 'ftrl-linear-plus-sigma', 'ftrl-l2-not-doubled', 'ftrl-no-shrinkage',
]


def within(got, exp):
    got = np.asarray(got, dtype=np.float64)
    exp = np.asarray(exp, dtype=np.float64)
    return np.abs(got - exp) <= ABS_TOL + REL_TOL * np.abs(exp)


def err_ratio(got_steps, exp_steps):
    """Largest |got - expected| over all steps, in units of the tolerance (> 1 fails)."""
    worst = 0.0
    for got, exp in zip(got_steps, exp_steps):
        got = np.asarray(got, dtype=np.float64)
        exp = np.asarray(exp, dtype=np.float64)
        worst = max(worst, float(np.nanmax(np.abs(got - exp) / (ABS_TOL + REL_TOL * np.abs(exp)))))
    return worst


# ---------------------------------------------------------------------------
# JSON output
# ---------------------------------------------------------------------------

def num(x):
    """Shortest decimal that reads back (as a double, then rounded to float32) as the float32 x."""
    x = F(x)
    v = float(str(x))
    if F(v) != x:  # double rounding could bite in theory; fall back to the exact value
        v = float(x)
    return v


def nums(a):
    return [num(x) for x in np.asarray(a, dtype=F).ravel()]


def build():
    torch.set_num_threads(1)
    cases_out = []
    checks = []
    caught = {m: [] for m in MUTANTS}
    for case in CASES:
        inputs = make_inputs(case)
        t = case['opt']['type']
        spec = run_spec(case, inputs)
        if t == 'ftrl':
            expected = spec
            source = 'numpy float32, TensorFlow ApplyFtrlV2 kernel'
        else:
            expected = run_torch(case, inputs)
            source = f'torch {torch.__version__} torch.optim.{torch_optimizer(case["opt"], [torch.zeros(1, requires_grad=True)]).__class__.__name__} float32'
            ok = all(within(s, e).all() for s, e in zip(spec, expected))
            worst = err_ratio(spec, expected)
            checks.append((case['name'], ok, worst))
            if not ok:
                raise SystemExit(f'{case["name"]}: the documented engine formula disagrees with torch '
                                 f'(worst error {worst:.2f}x the tolerance)')
        for m in MUTANTS:
            mut = run_spec(case, inputs, m)
            if not all(within(a, e).all() for a, e in zip(mut, expected)):
                caught[m].append((case['name'], err_ratio(mut, expected)))
        steps = []
        for s, ((idx, grads), exp) in enumerate(zip(inputs, expected)):
            st = {}
            if s in case.get('lr', {}):
                st['lr'] = case['lr'][s]
            if 'push' in case or 'touch' in case:
                st['keys'] = [KEYS[i] for i in idx]
            st['grads'] = nums(grads)
            st['expected'] = nums(exp)
            steps.append(st)
        cases_out.append({
            'name': case['name'],
            'source': source,
            'dim': case['dim'],
            'optimizer': case['opt'],
            'initializer': {'type': 'constant', 'value': case['init']},
            'seed': 1,
            'keys': KEYS,
            'steps': steps,
        })
    missed = [m for m, names in caught.items() if not names]
    if missed:
        raise SystemExit(f'the tolerance does not reject these wrong formulas on any case: {missed}')
    doc = {
        'description': 'Optimizer parity golden vectors for test/parity.test.ts. Generated by '
                       'scripts/gen_parity_vectors.py; do not edit by hand. Per case: create the table, '
                       'then for each step set lr (when given) with updateTable, push keys (the case keys '
                       'when the step has none) with grads (pushed rows x dim, float32), pull the case keys '
                       'and compare with expected (keys x dim).',
        'generator': {'torch': torch.__version__, 'numpy': np.__version__},
        'tolerance': {'abs': ABS_TOL, 'rel': REL_TOL},
        'cases': cases_out,
    }
    return doc, checks, caught


def dumps(doc):
    """JSON with one line per step array, so diffs stay readable and the file small."""
    lines = ['{']
    top = [k for k in doc if k != 'cases']
    for k in top:
        lines.append(f'  {json.dumps(k)}: {json.dumps(doc[k])},')
    lines.append('  "cases": [')
    for ci, c in enumerate(doc['cases']):
        lines.append('    {')
        for k in ['name', 'source', 'dim', 'optimizer', 'initializer', 'seed', 'keys']:
            lines.append(f'      {json.dumps(k)}: {json.dumps(c[k])},')
        lines.append('      "steps": [')
        for si, st in enumerate(c['steps']):
            body = json.dumps(st, separators=(',', ':'))
            lines.append(f'        {body}' + (',' if si + 1 < len(c['steps']) else ''))
        lines.append('      ]')
        lines.append('    }' + (',' if ci + 1 < len(doc['cases']) else ''))
    lines.append('  ]')
    lines.append('}')
    return '\n'.join(lines) + '\n'


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--check', action='store_true', help='do not write; exit 1 if the fixture differs')
    ap.add_argument('--out', default=OUT, help='output path (default: test/fixtures/parity.json)')
    args = ap.parse_args()
    doc, checks, caught = build()
    text = dumps(doc)
    for name, ok, worst in checks:
        print(f'  torch vs documented formula  {name:28s} worst {worst:.3f}x tolerance')
    for m, hits in caught.items():
        best = max(hits, key=lambda h: h[1])
        print(f'  mutant {m:34s} rejected by {len(hits)} case(s), most clearly by {best[0]} ({best[1]:.0f}x tolerance)')
    if args.check:
        with open(args.out, encoding='utf-8') as f:
            if f.read() != text:
                print(f'{os.path.relpath(args.out, ROOT)} is stale; rerun scripts/gen_parity_vectors.py', file=sys.stderr)
                sys.exit(1)
        print('fixture is up to date')
        return
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w', encoding='utf-8') as f:
        f.write(text)
    print(f'wrote {os.path.relpath(args.out, ROOT)} ({len(text)} bytes, {len(doc["cases"])} cases)')


if __name__ == '__main__':
    main()
