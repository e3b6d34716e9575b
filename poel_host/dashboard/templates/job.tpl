% rebase('layout.tpl', title=title, root=root, session=session, csrf=csrf, writable=writable, refresh=refresh)
<table id="job">
<tr><th>type</th><td>{{job['job_type']}}</td></tr>
<tr><th>queue</th><td>{{job['queue']}}</td></tr>
<tr><th>state</th><td class="state-{{job['state']}}" id="state">{{'waiting' if job.get('waiting') else job['state']}}</td></tr>
% if job.get('workflow_id') is not None:
<tr><th>workflow</th><td id="workflow"><a href="{{root}}/workflows/{{job['workflow_id']}}">{{workflow['name'] if workflow else 'workflow'}} ({{job['workflow_id']}})</a>, step {{job['step']}}{{(', waiting for %d of its dependencies' % job['waiting_on']) if job.get('waiting') else ''}}</td></tr>
% end
<tr><th>attempts</th><td>{{job['attempts']}} of {{job['max_attempts']}}</td></tr>
% if job.get('snoozes'):
<tr><th>snoozes</th><td id="snoozes">{{job['snoozes']}}</td></tr>
% end
<tr><th>priority</th><td>{{job['priority']}}</td></tr>
<tr><th>unique key</th><td>{{job['unique_key'] or '-'}}</td></tr>
% if job.get('key') is not None:
<tr><th>key</th><td id="key">{{job['key']}}</td></tr>
% end
<tr><th>created</th><td>{{when(job['created_at'])}}</td></tr>
<tr><th>run at</th><td>{{when(job['run_at'])}}</td></tr>
<tr><th>started</th><td>{{when(job['started_at'])}}</td></tr>
<tr><th>finished</th><td>{{when(job['finished_at'])}}</td></tr>
% if job['progress'] is None:
<tr><th>progress</th><td id="progress">-</td></tr>
% else:
<tr><th>progress</th><td id="progress"><progress max="1" value="{{job['progress']}}"></progress> {{'{:.0%}'.format(job['progress'])}} {{job['progress_message'] or ''}}</td></tr>
% end
<tr><th>lease</th><td>{{job['lease_owner'] or '-'}} {{('until ' + when(job['lease_expires_at'])) if job['lease_expires_at'] else ''}}</td></tr>
</table>
% if session:
<p id="actions">
% for action, states in (("retry", ("failed", "cancelled")), ("cancel", ("queued", "running")), ("delete", ("succeeded", "failed", "cancelled"))):
% if job['state'] in states:
<form class="inline" method="post" action="{{root}}/jobs/{{job['id']}}/{{action}}"><input type="hidden" name="csrf" value="{{csrf}}"><button id="{{action}}">{{action}}</button></form>
% end
% end
</p>
% end
<h2>Payload</h2>
% if payload is None:
<p class="note" id="payload">hidden (POEL_DASHBOARD_PAYLOADS=shown shows payloads; they can hold personal data)</p>
% else:
<pre id="payload">{{payload.text}}</pre>
% if payload.cut:
<p class="note">{{payload.length}} characters; <a href="?full=1">show all</a></p>
% end
% end
<h2>Result</h2>
% if job['result'] is None:
<p class="note" id="result">{{'none' if job['state'] == 'succeeded' else 'none yet' if job['state'] in ('queued', 'running') else 'none'}}</p>
% elif result is None:
<p class="note" id="result">hidden (POEL_DASHBOARD_PAYLOADS=shown shows results too)</p>
% else:
<pre id="result">{{result.text}}</pre>
% if result.cut:
<p class="note">{{result.length}} characters; <a href="?full=1">show all</a></p>
% end
% end
<h2>Errors</h2>
<ol id="errors" reversed>
% for e in errors:
<li><p>attempt {{e.get('attempt', '?')}} at {{e.get('at', '?')}}{{(', retry at ' + str(e['retry_at'])) if e.get('retry_at') else ''}}</p>
<pre class="error">{{e['error'].text}}</pre>
% if e['traceback']:
<details><summary>traceback</summary><pre>{{e['traceback'].text}}</pre></details>
% end
% if e['error'].cut or (e['traceback'] and e['traceback'].cut):
<p class="note">cut; <a href="?full=1">show all</a></p>
% end
</li>
% end
</ol>
% if not errors:
<p class="note">no error</p>
% end
