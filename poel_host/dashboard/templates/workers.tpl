% rebase('layout.tpl', title=title, root=root, session=session, csrf=csrf, writable=writable, refresh=refresh)
<table id="workers">
<tr><th>host</th><th>pid</th><th>status</th><th>version</th><th>heartbeat</th><th>started</th><th>capacity</th><th>queues</th><th>plugins</th><th>job types</th></tr>
% for w in rows:
<tr><td>{{w['host']}}</td><td class="n">{{w['pid']}}</td><td>{{w['status']}}</td><td>{{w['version']}}</td>
<td class="n">{{ago(w['heartbeat_age_s'])}} ago</td><td>{{when(w['started_at'])}}</td>
<td>{{w['concurrency']}} greenlets{{(', %s threads' % w['threads']) if w['threads'] is not None else ''}}{{(', %s processes' % w['processes']) if w['processes'] is not None else ''}}</td>
<td>{{', '.join(w['queues']) if w['queues'] else 'all'}}</td>
<td class="plugins">{{', '.join('%s %s' % (p['name'], p['version'] or '?') for p in w['plugins'])}}</td>
<td>{{len(w['job_types'])}}</td></tr>
% end
% if not rows:
<tr><td colspan="10" class="note">no worker registered</td></tr>
% end
</table>
