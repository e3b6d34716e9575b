% rebase('layout.tpl', title=title, root=root, session=session, writable=writable, refresh=refresh)
<form method="post" action="{{root}}/login" id="login">
<p><label>your name (for the audit) <input name="name" required maxlength="100"></label></p>
<p><label>dashboard token <input name="token" type="password" required></label></p>
<p><button>sign in</button></p>
</form>
