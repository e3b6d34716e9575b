% rebase('layout.tpl', title=title, root=root, session=session, csrf=csrf, writable=writable, refresh=refresh)
<table id="running">
<tr><th>id</th><th>type</th><th>queue</th><th>attempt</th><th>worker</th><th>running for</th><th>heartbeat</th><th>lease left</th></tr>
% for r in rows:
<tr><td><a href="{{root}}/jobs/{{r['id']}}">{{r['id']}}</a></td><td>{{r['job_type']}}</td><td>{{r['queue']}}</td>
<td class="n">{{r['attempts']}}/{{r['max_attempts']}}</td>
<td>{{('%s pid %s' % (r['host'], r['pid'])) if r['host'] else r['lease_owner']}}</td>
<td class="n">{{ago(r['running_s'])}}</td><td class="n">{{(ago(r['lease_age_s']) + ' ago') if r['host'] else '-'}}</td><td class="n">{{ago(r['lease_left_s'])}}</td></tr>
% end
% if not rows:
<tr><td colspan="8" class="note">nothing runs now</td></tr>
% end
</table>
