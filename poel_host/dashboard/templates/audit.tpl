% rebase('layout.tpl', title=title, root=root, session=session, csrf=csrf, writable=writable, refresh=refresh)
<table id="audit">
<tr><th>when</th><th>who</th><th>from</th><th>action</th><th>job</th><th>job type</th><th>detail</th></tr>
% for a in rows:
<tr><td>{{when(a['at'])}}</td><td>{{a['actor']}}</td><td>{{a['address'] or '-'}}</td><td>{{a['action']}}</td>
<td>{{a['job_id'] or '-'}}</td><td>{{a['job_type'] or '-'}}</td><td>{{a['detail'] or ''}}</td></tr>
% end
% if not rows:
<tr><td colspan="7" class="note">no action taken yet</td></tr>
% end
</table>
