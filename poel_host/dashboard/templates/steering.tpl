% rebase('layout.tpl', title=title, root=root, session=session, csrf=csrf, writable=writable, refresh=refresh)
<p class="note">Limits every worker holds at once, enforced by the database: at most so many slots of a job type or a queue running (each job takes its type's weight), at most so many starts a window, for each job key apart (per key), or in weighted turn between keys (fair). A row set by an operator wins over a Job's options until it is removed.</p>
<table id="steering">
<tr><th>kind</th><th>name</th><th>concurrency</th><th>in use</th><th>rate window</th><th>per key</th><th>fair</th><th>key field</th><th>source</th><th>set</th><th></th></tr>
% for r in rows:
<tr><td>{{'job type' if r['kind'] == 'type' else 'queue'}}</td><td>{{r['name']}}</td>
<td class="n">{{r['concurrency'] if r['concurrency'] is not None else '-'}}{{(' (weight %s)' % r['weight']) if r['weight'] != 1 else ''}}</td>
<td class="n">{{in_use(r)}}</td><td class="n">{{window(r)}}</td>
<td>{{'yes' if r['per_key'] else '-'}}</td>
<td>{{('yes' + (' (%s)' % ', '.join('%s=%s' % kv for kv in sorted(r['key_weights'].items())) if r['key_weights'] else '')) if r['fair'] else '-'}}</td>
<td>{{r['key_field'] or '-'}}</td><td>{{r['source']}}</td><td>{{when(r['set_at'])}} by {{r['set_by']}}</td>
<td>
% if session:
<form class="inline" method="post" action="{{root}}/unsteer"><input type="hidden" name="csrf" value="{{csrf}}"><input type="hidden" name="kind" value="{{r['kind']}}"><input type="hidden" name="name" value="{{r['name']}}"><button>remove</button></form>
% end
</td></tr>
% end
% if not rows:
<tr><td colspan="11" class="note">nothing is steered</td></tr>
% end
</table>
<p class="note">In use: the slots steered jobs take now (per key: the keys with running jobs and the busiest key's slots). Rate window: the starts in the current window over the rate (per key: the busiest key's).</p>
% if session:
<h2>Steer</h2>
<p class="note">Replaces the job type's or queue's steering whole: what is left empty is unset.</p>
<form id="steer" method="post" action="{{root}}/steer"><input type="hidden" name="csrf" value="{{csrf}}">
<select name="kind"><option value="type">job type</option><option value="queue">queue</option></select>
<input name="name" required maxlength="200" placeholder="name">
<input name="concurrency" type="number" min="1" placeholder="concurrency">
<input name="weight" type="number" min="1" placeholder="weight (1)">
<input name="rate" type="number" min="1" placeholder="rate"> per <input name="per" type="number" min="0.001" step="any" placeholder="1"> s
<label><input type="checkbox" name="per_key" value="1"> per key</label>
<label><input type="checkbox" name="fair" value="1"> fair</label>
<input name="key_weights" maxlength="2000" placeholder="key weights: big=3, small=1">
<input name="key_field" maxlength="200" placeholder="key field">
<button>steer</button></form>
% end
