% rebase('layout.tpl', title=title, root=root, session=session, csrf=csrf, writable=writable, refresh=refresh)
<table id="schedules">
<tr><th>job type</th><th>schedule</th><th>queue</th><th>last slot</th><th>next run</th></tr>
% for r in rows:
<tr><td><a href="{{root}}/jobs?type={{q(r["type"])}}">{{r['type']}}</a></td><td><code>{{r['schedule']}}</code></td><td>{{r['queue']}}</td>
<td>{{when(r['last_slot'])}}</td><td>{{when(r['next_run'])}}</td></tr>
% end
% if not rows:
<tr><td colspan="5" class="note">no periodic job among the plugins this dashboard loaded</td></tr>
% end
</table>
