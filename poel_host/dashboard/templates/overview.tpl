% rebase('layout.tpl', title=title, root=root, session=session, csrf=csrf, writable=writable, refresh=refresh)
<p id="workers">Workers alive: <strong>{{alive}}</strong>
% if gone:
 (and {{gone}} gone, see <a href="{{root}}/workers">Workers</a>)
% end
</p>
<h2>Queues</h2>
<table id="queues">
<tr><th>queue</th><th>job type</th><th>queued (due)</th><th>oldest waits</th><th>running</th><th>succeeded, last hour</th><th>failed, last hour</th></tr>
% for (queue, job_type), g in groups:
<tr><td>{{queue}}{{!' <strong class="paused">paused</strong>' if ('queue', queue) in paused else ''}}</td><td><a href="{{root}}/jobs?type={{q(job_type)}}">{{job_type}}</a>{{!' <strong class="paused">paused</strong>' if ('type', job_type) in paused else ''}}</td>
<td class="n">{{g['queued'] if g['queued'] < 10000 else '10,000+'}}</td><td class="n">{{ago(g['oldest_s']) if g['oldest_s'] is not None else '-'}}</td>
<td class="n">{{g['running']}}</td><td class="n">{{g['succeeded']}}</td><td class="n">{{g['failed']}}</td></tr>
% end
% if not groups:
<tr><td colspan="7" class="note">nothing queued, running or finished in the last hour</td></tr>
% end
</table>
<h2>Paused</h2>
<p class="note">A paused queue's or job type's queued jobs wait: no worker claims them until it is resumed; running jobs finish, enqueueing and schedules go on.</p>
<table id="pauses">
<tr><th>kind</th><th>name</th><th>since</th><th>by</th><th>reason</th><th></th></tr>
% for p in pauses:
<tr><td>{{'job type' if p['kind'] == 'type' else 'queue'}}</td><td>{{p['name']}}</td><td>{{when(p['paused_at'])}}</td><td>{{p['paused_by']}}</td><td>{{p['reason'] or '-'}}</td>
<td>
% if session:
<form class="inline" method="post" action="{{root}}/resume"><input type="hidden" name="csrf" value="{{csrf}}"><input type="hidden" name="kind" value="{{p['kind']}}"><input type="hidden" name="name" value="{{p['name']}}"><button>resume</button></form>
% end
</td></tr>
% end
% if not pauses:
<tr><td colspan="6" class="note">nothing is paused</td></tr>
% end
</table>
% if session:
<form id="pause" method="post" action="{{root}}/pause"><input type="hidden" name="csrf" value="{{csrf}}">
<select name="kind"><option value="queue">queue</option><option value="type">job type</option></select>
<input name="name" required maxlength="200" placeholder="name"> <input name="reason" maxlength="1000" placeholder="reason (optional)"> <button>pause</button></form>
% end
<h2>Last hour</h2>
% top = max([1] + [ok + bad for _, ok, bad in chart])
<svg class="chart" width="600" height="80" role="img" aria-label="jobs finished a minute over the last hour">
% for i, (minute, ok, bad) in enumerate(chart):
% h_ok = 70 * ok / top
% h_bad = 70 * bad / top
<rect class="ok" x="{{i * 10}}" y="{{75 - h_ok - h_bad}}" width="8" height="{{h_ok}}"><title>{{when(minute)}}: {{ok}} succeeded</title></rect>
<rect class="bad" x="{{i * 10}}" y="{{75 - h_bad}}" width="8" height="{{h_bad}}"><title>{{when(minute)}}: {{bad}} failed</title></rect>
% end
</svg>
<p class="note">Jobs finished each minute (green succeeded, red failed); at most {{top}} a minute.</p>
<h2>Failed (the dead letter)</h2>
<table id="failed">
<tr><th>job type</th><th>failed jobs</th><th></th></tr>
% for job_type, count in dead:
<tr><td><a href="{{root}}/jobs?state=failed&amp;type={{q(job_type)}}">{{job_type}}</a></td><td class="n">{{count}}</td>
<td>
% if session:
<form class="inline" method="post" action="{{root}}/retry-failed"><input type="hidden" name="csrf" value="{{csrf}}"><input type="hidden" name="job_type" value="{{job_type}}"><button>retry all</button></form>
% end
</td></tr>
% end
% if not dead:
<tr><td colspan="3" class="note">no failed job</td></tr>
% end
</table>
