//! Where a member's node files the posts of a list: one folder per list, `Lists/<list>`,
//! created (and subscribed, so mail clients show it) with the first post. List names are
//! `a-z`, `0-9`, `-` and `.` (the ledger enforces it), so the folder name needs no encoding.

use std::sync::Arc;

use crate::store::{DELIMITER, FolderError, MailStore, Mailboxes};

/// The parent folder of every list's folder.
pub const LISTS_FOLDER: &str = "Lists";

/// The folder of `list`'s posts.
pub fn list_folder(list: &str) -> String {
    format!("{LISTS_FOLDER}{DELIMITER}{list}")
}

/// Opens `list`'s folder, creating and subscribing it first if it does not exist yet. Blocks
/// on the disk when it creates (call it off the async workers).
pub fn open_list_folder(
    mailboxes: &dyn Mailboxes,
    list: &str,
) -> Result<Arc<dyn MailStore>, FolderError> {
    let name = list_folder(list);
    if let Some(m) = mailboxes.open(&name) {
        return Ok(m);
    }
    match mailboxes.create(&name) {
        // Another delivery created it meanwhile.
        Ok(()) | Err(FolderError::Exists(_)) => {}
        Err(e) => return Err(e),
    }
    mailboxes.set_subscribed(&name, true)?;
    mailboxes.open(&name).ok_or(FolderError::NotFound(name))
}
