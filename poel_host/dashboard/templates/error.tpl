% rebase('layout.tpl', title=title, root=root, session=session, csrf=csrf, writable=writable, refresh=refresh)
<p id="message">{{message}}</p>
<p><a href="{{root}}/">Back to the overview</a></p>
