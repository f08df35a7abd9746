"""Choose MAML's default episode head (head_scale, inner_lr) on validation-pool episodes (no target classes)."""
import sys, torch, time, itertools, json
from fewshot_bench.methods.backbone import load_backbone
from fewshot_bench.baselines.maml import FOMAML, MAMLConfig
from fewshot_bench.data.loading import get_task_data, set_data_dir
from fewshot_bench.episodes.sampling import sample_episode
from fewshot_bench.methods import EpisodeContext
torch.set_num_threads(1)
set_data_dir("/work/shared/data")
bb = load_backbone("minilm", device="cpu")
n = int(sys.argv[1])
for task in ("banking77", "hwu64"):
    data = get_task_data(task, 1)
    eps = [sample_episode(data, pool="validation", n_way=5, k_shot=1, q_query=15, seed=0, index=i) for i in range(n)]
    for s, lr in [(1.0, 0.01)] + list(itertools.product((0.003, 0.01, 0.03), (0.03, 0.1, 0.3))):
        kw = dict(head_scale=s, inner_lr=lr)
        t=time.time(); before=[]; changed=0; total=0; acc0=acc3=0
        for i, ep in enumerate(eps):
            outs = []
            for steps in (0, -1):
                m = FOMAML(MAMLConfig(meta_steps=0, adapt_steps=steps, **kw))
                ctx = EpisodeContext(bb, ep, i)
                p = m.adapt(ctx)
                with torch.no_grad():
                    outs.append(p.predict(ctx.batch(ep, "query")).argmax(-1))
                if steps: before.append(ctx.recorder.losses[0])
            y = torch.tensor(ep.query_labels)
            changed += int((outs[0] != outs[1]).sum()); total += len(y)
            acc0 += float((outs[0]==y).float().mean()); acc3 += float((outs[1]==y).float().mean())
        print(json.dumps(dict(task=task, head_scale=s, inner_lr=lr, loss_before=round(sum(before)/n,4), changed=round(changed/total,3), acc_unadapted=round(acc0/n,3), acc_adapted=round(acc3/n,3), seconds=round(time.time()-t))), flush=True)
