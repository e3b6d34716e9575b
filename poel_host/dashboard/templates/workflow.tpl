% rebase('layout.tpl', title=title, root=root, session=session, csrf=csrf, writable=writable, refresh=refresh)
<table id="workflow">
<tr><th>name</th><td id="name">{{flow.name}}</td></tr>
<tr><th>state</th><td class="state-{{flow.state}}" id="state">{{flow.state}}</td></tr>
<tr><th>steps</th><td id="counts">{{len(flow.steps)}}:
% for s in step_states:
% if counts.get(s):
<a href="?steps={{s}}#steps" class="state-{{s}}">{{counts[s]}} {{s}}</a>
% end
% end
</td></tr>
<tr><th>created</th><td>{{when(flow.created_at)}}</td></tr>
<tr><th>finished</th><td>{{when(flow.finished_at)}}</td></tr>
% if flow.failed_step is not None:
<tr><th>failed step</th><td id="failed-step">
% if failed is not None:
<a href="{{root}}/jobs/{{failed.job_id}}">{{flow.failed_step}}</a>
% else:
{{flow.failed_step}}
% end
</td></tr>
<tr><th>error</th><td><pre id="failed-error">{{failed_error.text}}</pre>
% if failed_error.cut:
<p class="note">{{failed_error.length}} characters; <a href="?full=1">show all</a></p>
% end
</td></tr>
% end
</table>
<h2>Graph</h2>
<div class="graph">{{!drawing}}</div>
% if picture.drawn < picture.steps:
<p class="note" id="not-drawn">{{picture.drawn}} of {{picture.steps}} steps drawn{{(' (%d steps in the last %d layers not at all)' % (picture.hidden_steps, picture.hidden_layers)) if picture.hidden_layers else ''}}; the table lists them all.</p>
% end
<h2 id="steps-heading">Steps</h2>
% if only:
<p class="note">Only the {{only}} steps; <a href="?#steps">all steps</a>.</p>
% end
<table id="steps" aria-labelledby="steps-heading">
<tr><th>step</th><th>job</th><th>type</th><th>state</th><th>after</th><th>attempts</th><th>duration</th><th>error</th></tr>
% for s in steps:
<tr><td>{{s.name}}</td><td><a href="{{root}}/jobs/{{s.job_id}}">{{s.job_id}}</a></td><td>{{s.job_type}}</td>
<td class="state-{{s.state}}">{{s.state}}</td>
<td>{{', '.join(s.after[:5]) + (' and %d more' % (len(s.after) - 5) if len(s.after) > 5 else '')}}</td>
<td class="n">{{s.attempts}}/{{s.max_attempts}}</td><td class="n">{{took(durations[s.name]) or '-'}}</td>
<td>{{clip(s.error or '', 300).text}}{{'…' if s.error and len(s.error) > 300 else ''}}</td></tr>
% end
% if not steps:
<tr><td colspan="8" class="note">no step here</td></tr>
% end
</table>
<p class="note" id="steps-shown">
% if steps:
steps {{start}} to {{start + len(steps) - 1}} of {{listed}}
% end
% if earlier:
<a id="earlier" href="?{{'steps=' + only + '&' if only else ''}}from={{earlier}}#steps">previous steps</a>
% end
% if later:
<a id="later" href="?{{'steps=' + only + '&' if only else ''}}from={{later}}#steps">next steps</a>
% end
</p>
