//! The plan over every board DTB in Debian armhf kernel package (being written).
