% rebase('layout.tpl', title=title, root=root, session=session, csrf=csrf, writable=writable, refresh=refresh)
<form method="get" action="{{root}}/workflows" id="filters">
<label>state <select name="state"><option value="">any</option>
% for s in states:
<option value="{{s}}" {{'selected' if state == s else ''}}>{{s}}</option>
% end
</select></label>
<button>filter</button>
</form>
<table id="workflows">
<tr><th>id</th><th>name</th><th>state</th><th>steps left</th><th>created</th><th>finished</th><th>failed step</th><th>error</th></tr>
% for r in rows:
<tr><td><a href="{{root}}/workflows/{{r['id']}}">{{r['id']}}</a></td><td>{{r['name']}}</td>
<td class="state-{{r['state']}}">{{r['state']}}</td><td class="n">{{r['steps_left']}}/{{r['steps']}}</td>
<td>{{when(r['created_at'])}}</td><td>{{when(r['finished_at'])}}</td><td>{{r['failed_step'] or ''}}</td><td>{{r['failed_error'] or ''}}</td></tr>
% end
% if not rows:
<tr><td colspan="8" class="note">no workflow matches</td></tr>
% end
</table>
% if more:
% if window:
<p class="note">Fewer than a page matched among the {{window}} workflows looked at; older ones, below id {{next_before}}, were not looked at yet.</p>
% end
<p><a id="more" href="{{root}}/workflows{{more}}">older workflows</a></p>
% end
