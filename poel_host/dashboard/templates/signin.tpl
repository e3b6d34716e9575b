% rebase('layout.tpl', title=title, root=root, session=session, csrf=csrf, writable=writable, refresh=refresh)
<form method="post" action="{{root}}/signin" id="signin">
% if next:
<input type="hidden" name="next" value="{{next}}">
% end
<p><label>your name (for the audit) <input name="name" required maxlength="100"></label></p>
<p><label>dashboard token <input name="token" type="password" required autocomplete="current-password"></label></p>
<p><button>sign in</button></p>
</form>
<p class="note">A session lasts {{hours}} hours at most; signing out ends it on the server.</p>
