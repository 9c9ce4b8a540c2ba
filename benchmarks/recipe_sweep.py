"""Compare cpu-demo training-recipe variants quickly (issue 7): many short from-scratch runs in one process, each
trained and scored (VOC07 mAP on the test split) with the project's own model, loss, data and evaluation.

    python -m benchmarks.recipe_sweep DATA_ROOT OUT_JSON NAME:key=val,key=val [NAME:...]

Keys (defaults = the cpu-demo preset as it was before these sweeps; today's preset is bgbias=1,l2s=10): lr iters batch opt(adamw|sgd) clip width l2(0 = no L2Norm) l2s (L2Norm start
scale) init(default|fanout) bgbias(1 = background-prior head init) wd warm xbn(0 = no BN in extras) amp seed evaln
size(200|300) workers. Meant for a lent GPU (440 iterations of the width-0.25 model take ~15 s on an H200); on
2 CPU cores one run takes ~12 minutes. Results of the sweeps that chose the preset: docs/CPU_DEMO.md.
"""
import json, math, os, sys, time, traceback
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch
from torch import nn
from ssd import build_ssd
from layers import MultiBoxLoss
from data import build_dataset, detection_collate
from data.config import MEANS
from data.transforms import SSDAugmentation
from utils.inference.predictor import Predictor
from utils.metrics.evaluation import evaluate_model

DEF = dict(lr=2e-3, iters=440, batch=32, opt='adamw', clip=10.0, width=0.25, l2=1, init='default', bgbias=0,
           wd=5e-4, warm=50, xbn=1, amp=1, workers=int(os.environ.get('WORKERS', 12)), seed=0, evaln=0, size=300, l2s=20.0)


def run(name, cfg, root, dev):
    torch.manual_seed(cfg['seed'])
    ds = build_dataset('custom', root, 'train', SSDAugmentation(cfg['size'], MEANS, mode='flip'))
    test = build_dataset('custom', root, 'test')
    nc = len(ds.class_names) + 1
    net = build_ssd('train', cfg['size'], nc, width=cfg['width'], batch_norm=True)
    if not cfg['l2']:
        net.L2Norm = nn.Identity()
    else:
        net.L2Norm.weight.data.fill_(cfg['l2s'])
    if not cfg['xbn']:
        net.extras_bn = nn.ModuleList([nn.Identity() for _ in net.extras_bn])
    if cfg['init'] == 'fanout':
        for m in net.vgg:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu'); nn.init.zeros_(m.bias)
    if cfg['bgbias']:
        for m in net.conf:
            b = m.bias.data.view(-1, nc); b[:, 0] = math.log(0.99 * (nc - 1) / 0.01)
    net = net.to(dev).to(memory_format=torch.channels_last).train()
    crit = MultiBoxLoss(nc)
    dec = [p for p in net.parameters() if p.ndim > 1]; nod = [p for p in net.parameters() if p.ndim <= 1]
    groups = [{'params': dec, 'weight_decay': cfg['wd']}, {'params': nod, 'weight_decay': 0.0}]
    opt = (torch.optim.AdamW(groups, lr=cfg['lr']) if cfg['opt'] == 'adamw'
           else torch.optim.SGD(groups, lr=cfg['lr'], momentum=0.9))
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=cfg['iters'] * cfg['batch'],
                                             generator=torch.Generator().manual_seed(cfg['seed']))
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg['batch'], sampler=sampler, collate_fn=detection_collate,
                                         num_workers=cfg['workers'], pin_memory=dev.type == 'cuda', drop_last=True,
                                         persistent_workers=False, prefetch_factor=4 if cfg['workers'] else None)
    t0 = time.time(); hist = []; evals = []
    for i, (x, t) in enumerate(loader):
        w = min(1.0, 0.001 + (1 - 0.001) * (i + 1) / cfg['warm']) if cfg['warm'] else 1.0
        cos = 0.5 * (1 + math.cos(math.pi * i / cfg['iters']))
        for g in opt.param_groups:
            g['lr'] = cfg['lr'] * w * cos
        x = x.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
        t = [a.to(dev) for a in t]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bool(cfg['amp'])):
            loc, conf, pri = net(x)
        ll, lc = crit((loc.float(), conf.float(), pri), t)
        loss = ll + lc
        opt.zero_grad(set_to_none=True); loss.backward()
        if cfg['clip']:
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg['clip'])
        opt.step()
        if (i + 1) % 20 == 0:
            hist.append((i + 1, round(float(ll), 3), round(float(lc), 3)))
        if cfg['evaln'] and (i + 1) % cfg['evaln'] == 0 and i + 1 < cfg['iters']:
            evals.append((i + 1, mAP(net, test, nc, cfg['size'], dev)))
            net.train()
    secs = time.time() - t0
    m = mAP(net, test, nc, cfg['size'], dev)
    r = {'name': name, 'cfg': cfg, 'mAP': m, 'train_s': round(secs, 1), 'loss_tail': hist[-3:], 'evals': evals,
         'device': str(dev)}
    print(json.dumps(r), flush=True)
    return r


def mAP(net, test, nc, size, dev):
    net.eval()
    tnet = build_ssd('test', size, nc, width=net.width, batch_norm=True)
    tnet.load_state_dict(net.state_dict(), strict=False)
    if isinstance(net.extras_bn[0], nn.Identity):
        tnet.extras_bn = nn.ModuleList([nn.Identity() for _ in net.extras_bn])
    if isinstance(net.L2Norm, nn.Identity):
        tnet.L2Norm = nn.Identity()
    pred = Predictor(tnet, list(test.class_names), size, dev, amp=False)
    res = evaluate_model(pred, test, batch_size=50, num_workers=4)
    return round(res['mAP'], 4)


def main(argv):
    root, out_json = argv[0], argv[1]
    dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    results = []
    if os.path.exists(out_json):
        results = json.load(open(out_json))
    for spec in argv[2:]:
        name, _, kv = spec.partition(':')
        cfg = dict(DEF)
        for item in filter(None, kv.split(',')):
            k, v = item.split('=')
            cfg[k] = type(DEF[k])(v) if not isinstance(DEF[k], float) else float(v)
        try:
            results.append(run(name, cfg, root, dev))
        except Exception as e:  # keep the sweep going
            traceback.print_exc()
            results.append({'name': name, 'error': repr(e)})
        with open(out_json, 'w') as fh:
            json.dump(results, fh, indent=1)
    print('\nSUMMARY')
    for r in results:
        print(f"{r['name']:<14} mAP {r.get('mAP')}  {r.get('train_s')}s  loss {r.get('loss_tail', [''])[-1:]} evals {r.get('evals')}")


if __name__ == '__main__':
    main(sys.argv[1:])
