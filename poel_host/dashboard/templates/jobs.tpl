% rebase('layout.tpl', title=title, root=root, session=session, csrf=csrf, writable=writable, refresh=refresh)
<form method="get" action="{{root}}/jobs" id="filters">
<label>state <select name="state"><option value="">any</option>
% for s in states:
<option value="{{s}}" {{'selected' if filters['state'] == s else ''}}>{{s}}</option>
% end
</select></label>
<label>type <input name="type" value="{{filters['job_type'] or ''}}" size="20"></label>
<label>queue <input name="queue" value="{{filters['queue'] or ''}}" size="12"></label>
<label>error contains <input name="error" value="{{filters['error'] or ''}}" size="20"></label>
<button>filter</button>
</form>
<table id="jobs">
<tr><th>id</th><th>type</th><th>queue</th><th>state</th><th>attempts</th><th>run at</th><th>finished</th><th>last error</th></tr>
% for r in rows:
<tr><td><a href="{{root}}/jobs/{{r['id']}}">{{r['id']}}</a></td><td>{{r['job_type']}}</td><td>{{r['queue']}}</td>
<td class="state-{{r['state']}}">{{'waiting' if r.get('waiting') else r['state']}}</td><td class="n">{{r['attempts']}}/{{r['max_attempts']}}</td>
<td>{{when(r['run_at'])}}</td><td>{{when(r['finished_at'])}}</td><td>{{r['last_error'] or ''}}</td></tr>
% end
% if not rows:
<tr><td colspan="8" class="note">no job matches</td></tr>
% end
</table>
% if more:
% if window:
<p class="note">Fewer than a page matched among the {{window}} jobs looked at; older ones, below id {{next_before}}, were not looked at yet.</p>
% end
<p><a id="more" href="{{root}}/jobs{{more}}">older jobs</a></p>
% end
